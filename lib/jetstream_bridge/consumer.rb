# frozen_string_literal: true

require_relative "handling"
require_relative "consumer/running"
require_relative "consumer/settings"

module JetstreamBridge
  # A durable pull consumer. The core fetches (one batch ahead), decodes and keeps
  # messages alive; this Ruby loop runs the handler on the calling thread and settles
  # each message: ack on success, NAK with the backoff delay on failure, dead-letter on
  # max_deliver, unrecoverable errors and malformed bodies.
  class Consumer
    # How long one wait for messages lasts before the loop checks again (milliseconds).
    WAIT_MS = 2_000
    # Floor on the server's max_ack_pending for this durable.
    MIN_ACK_PENDING = 1_000
    # Longest pause between attempts to reach NATS (seconds).
    MAX_RETRY_PAUSE = 10.0

    attr_reader :durable_name, :batch_size

    def initialize(handler = nil, durable_name: nil, batch_size: nil, &block)
      @handler = block || handler
      raise ArgumentError, "subscribe needs a block or an object responding to #call(event, subject, deliveries)" unless @handler.respond_to?(:call)

      config = JetstreamBridge.config
      config.validate!
      @durable_name = (durable_name || config.durable_name).to_s
      Native.validate_token("durable_name", @durable_name)
      @batch_size = Integer(batch_size || config.batch_size)
      raise ArgumentError, "batch_size must be positive, got #{@batch_size}" unless @batch_size.positive?

      @stop = false
      @native = nil
      @batch = nil
    end

    # Processes messages until stop! (or SIGTERM/SIGINT when run on the main thread).
    def run!
      @stop = false
      Running.add(self)
      @settings = Settings.from(JetstreamBridge.config)
      Signals.stopping(self) do
        @native = start_pull_loop
        Connection.drain_events
        process_until_stopped if @native
      end
      self
    ensure
      # Thread#kill skips every rescue: give back what this batch still holds (settling
      # an already-settled message is a no-op), so it is not locked until ack_wait.
      @batch&.each { |message| @native.nak(message[0], nil) }
      @batch = nil
      @native&.stop
      Connection.drain_events
      Running.remove(self)
    end

    # Ends run! after the message in hand: it is settled, the rest are returned to the
    # server. Safe from a signal handler (it only sets a flag and wakes the loop).
    def stop!
      @stop = true
      @native&.request_stop
      true
    end

    def stopped?
      @stop
    end

    # Creates or updates the durable as run! would with auto_provision (JetstreamBridge.provision!);
    # returns [action, changes].
    def provision_durable!
      Connection.client.ensure_consumer(loop_options)
    end

    # Whether the handler running now has outlasted config.max_handler_time.
    def handler_stuck?
      @native ? @native.handler_stuck? : false
    end

    private

    # The core's pull loop on this process's connection. NATS unreachable (down at boot,
    # or mid-restart) is waited out, each failure logged, retrying with a growing pause,
    # until it answers or stop! is called (then nil): a consumer thread started with the
    # app must not die because the server came up later. Refused credentials and a
    # missing durable with auto_provision off are not waited out: they raise.
    def start_pull_loop
      pause = 0.5
      until @stop
        begin
          return Connection.client.pull_loop(loop_options)
        rescue AuthorizationError
          raise
        rescue ConnectionError => e
          Instrumentation.emit("warn", "consumer_waiting",
                               "consumer #{@durable_name} cannot reach NATS (#{e.message}); retrying in #{pause}s")
          sleep_unless_stopped(pause)
          pause = [pause * 2, MAX_RETRY_PAUSE].min
        end
      end
      nil
    end

    # Sleeps in short steps, so that stop! (a flag, safe from a trap) ends the wait soon.
    def sleep_unless_stopped(seconds)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
      sleep 0.05 until @stop || Process.clock_gettime(Process::CLOCK_MONOTONIC) >= deadline
    end

    def process_until_stopped
      batch_wrappers = @settings.batch_wrappers
      until @stop
        batch = @batch = @native.next_batch(@batch_size, WAIT_MS)
        if batch_wrappers.empty? || batch.empty?
          handle_each(batch)
        else
          batch.each_slice(@settings.batch_limit) { |slice| handle_batch(slice, batch_wrappers) }
        end
        @batch = nil
        Connection.drain_events
      end
    end

    def handle_each(batch)
      batch.each_with_index do |message, index|
        if @stop
          batch[index..].each { |unhandled| @native.nak(unhandled[0], nil) }
          break
        end
        handle(message)
      end
    end

    # One unit of work for the whole batch (the inbox: one database transaction). Messages
    # handled successfully are acked only after it completes; if it fails (the commit), they
    # are given back for redelivery.
    def handle_batch(batch, batch_wrappers)
      acks = @deferred_acks = []
      Handling.around_batch(batch_wrappers) { handle_each(batch) }
      @deferred_acks = nil
      acks.each { |id| @native.ack(id) }
    rescue StandardError => e
      @deferred_acks = nil
      # Every message of the batch goes back (settling a settled message is a no-op): those
      # handled but not committed, and those never reached when the unit of work failed.
      batch.each { |message| @native.nak(message[0], nil) }
      Instrumentation.emit("error", "batch_failed",
                           "batch of #{batch.size} not committed (#{acks.size} handled), given back for redelivery: " \
                           "#{e.class}: #{e.message}")
    ensure
      @deferred_acks = nil
    end

    def handle(message)
      id, subject, event, deliveries, decode_error, msg_id, stream_seq = message
      # Given back while an overdue handler held this worker: another worker has it now.
      return unless @native.claim(id)

      problem = decode_error || envelope_problem(event)
      return dead_letter(id, "malformed", MalformedMessageError.name, problem, deliveries, subject) if problem
      return dead_letter(id, "max_deliver", DeliveryLimitError.name, over_limit(deliveries), deliveries, subject) if deliveries > @settings.max_deliver

      wrappers = @settings.wrappers
      if wrappers.empty?
        @handler.call(event, subject, deliveries)
      else
        Handling.call(@handler, MessageContext.new(event: event, subject: subject, deliveries: deliveries,
                                                   msg_id: msg_id, stream_seq: stream_seq, stream: @settings.stream),
                      wrappers)
      end
      @deferred_acks ? @deferred_acks << id : @native.ack(id)
    rescue *@settings.unrecoverable_errors => e
      dead_letter(id, "unrecoverable", e.class.name, e.message, deliveries, subject)
    rescue StandardError, ScriptError, SystemStackError => e
      # ScriptError (NotImplementedError, LoadError) and deep recursion are handler bugs,
      # retried like any failure: they must not end the loop.
      handler_failed(id, e, deliveries, subject)
    rescue Exception => e # rubocop:disable Lint/RescueException
      # exit, a signal, NoMemoryError, a bare Exception: settled like any failure (retried
      # after the backoff, dead-lettered at max_deliver, never abandoned), then it ends run!.
      # Thread#kill raises nothing: run!'s ensure gives the message back.
      Instrumentation.emit("error", "handler_aborted",
                           "handler raised #{e.class} (not a StandardError) on #{subject} (delivery #{deliveries}/#{@settings.max_deliver}); " \
                           "the message is settled as a failure and run! ends: #{e.message}")
      handler_failed(id, e, deliveries, subject)
      raise
    end

    def handler_failed(id, error, deliveries, subject)
      if deliveries >= @settings.max_deliver
        dead_letter(id, "max_deliver", error.class.name, error.message, deliveries, subject)
      else
        delay = backoff_ms(deliveries)
        @native.nak(id, delay)
        Instrumentation.emit("warn", "handler_failed",
                             "handler failed on #{subject} (delivery #{deliveries}/#{@settings.max_deliver}), retry in #{delay}ms: #{error.class}: #{error.message}")
      end
    end

    def dead_letter(id, reason, error_class, error_message, deliveries, subject)
      if @settings.dlq_subject
        @native.dead_letter(id, reason, error_class.to_s, error_message.to_s)
        Instrumentation.emit("warn", "dead_lettered",
                             "message on #{subject} moved to #{@settings.dlq_subject} (#{reason}, delivery #{deliveries}): #{error_class}: #{error_message}")
      else
        @native.term(id)
        Instrumentation.emit("error", "terminated",
                             "message on #{subject} dropped (#{reason}, delivery #{deliveries}; use_dlq is off): #{error_class}: #{error_message}")
      end
    rescue DlqRoutingFailedError => e
      # The original is kept: back to the server, redelivered after the backoff delay (the
      # durable has no server-side delivery limit with use_dlq: see server_max_deliver),
      # and dead-lettered again then.
      @native.nak(id, backoff_ms(deliveries))
      Instrumentation.emit("error", "dlq_failed", "#{e.message}; message on #{subject} kept, dead-lettered again on its next delivery")
    end

    # Past max_deliver: the handler is not called again. It happens when an earlier
    # dead-letter publish failed, or the process died while handling the message.
    def over_limit(deliveries)
      "delivered #{deliveries} times (max_deliver #{@settings.max_deliver}) without being settled: " \
        "an earlier dead-letter publish failed or the worker stopped mid-message"
    end

    # With use_dlq the server never stops delivering a message (-1): the bridge counts
    # deliveries and dead-letters at max_deliver. A server-side limit would silently drop
    # a message whose last delivery could not be moved to the DLQ (a failed DLQ publish,
    # a crash): the server delivers it no more, and nothing else has it. Without use_dlq
    # the message is terminated at max_deliver anyway, and the server's limit also ends
    # redeliveries of a message the client cannot read (see src/consume/unreadable.rs).
    def server_max_deliver(config)
      config.use_dlq ? -1 : config.max_deliver
    end

    def envelope_problem(event)
      return "body is not an event envelope (expected a JSON object)" unless event.is_a?(Hash)
      return "event envelope has no event_type" unless event["event_type"].is_a?(String)
      return "event envelope has no payload" unless event.key?("payload")
      version = event["schema_version"]
      return "event envelope has schema_version #{version.inspect}; this bridge reads version 1" unless version.nil? || version == 1

      nil
    end

    def backoff_ms(deliveries)
      schedule = @settings.backoff_ms
      schedule.empty? ? nil : schedule[[deliveries - 1, schedule.size - 1].min]
    end

    def loop_options
      config = JetstreamBridge.config
      stream_subjects = [config.source_subject, config.destination_subject]
      stream_subjects << config.dlq_subject if config.use_dlq
      {
        "stream" => config.stream_name, "durable" => @durable_name,
        "filter_subject" => config.destination_subject, "ack_wait_ms" => config.ack_wait_ms,
        "max_deliver" => server_max_deliver(config), "max_ack_pending" => [@batch_size * 4, MIN_ACK_PENDING].max,
        "batch_size" => @batch_size, "dlq_subject" => (config.dlq_subject if config.use_dlq),
        "stream_subjects" => (stream_subjects if config.auto_provision), "provision" => config.auto_provision,
        "duplicate_window_ms" => config.duplicate_window_ms, "replicas" => config.stream_replicas,
        "stream_limits" => config.stream_limits, "max_handler_time_ms" => config.max_handler_time_ms,
        "verify" => config.verify_topology != false
      }
    end
  end
end
