# frozen_string_literal: true

require_relative "handling"
require_relative "consumer/running"
require_relative "consumer/settings"
require_relative "consumer/handler_signature"
require_relative "consumer/processor"
require_relative "consumer/pool"

module JetstreamBridge
  # A durable consumer, pull or push (config.consumer_mode). The core fetches (one batch
  # ahead) or takes a push durable's deliveries, and keeps messages alive; the Ruby loop
  # (Pool) runs the handler through the middleware chain, on the calling thread or on
  # `concurrency` threads, and settles each message (see Processor): the same for both.
  class Consumer
    # Floor on the server's max_ack_pending for this durable.
    MIN_ACK_PENDING = 1_000
    # Longest pause between attempts to reach NATS (seconds).
    MAX_RETRY_PAUSE = 10.0

    attr_reader :durable_name, :batch_size, :concurrency

    # concurrency: handler threads (config.concurrency by default; 1 runs handlers on the
    # calling thread). partition_by: ->(event) { key } for the order kept between them
    # (default: resource_type + resource_id); see Pool.
    def initialize(handler = nil, durable_name: nil, batch_size: nil, concurrency: nil, partition_by: nil, &block)
      @handler = block || handler
      HandlerSignature.check!(@handler, "subscribe")

      config = JetstreamBridge.config
      config.validate!
      @durable_name = (durable_name || config.durable_name).to_s
      Native.validate_token("durable_name", @durable_name)
      check_delivery_subject!(config)
      @batch_size = Integer(batch_size || config.batch_size)
      raise ArgumentError, "batch_size must be positive, got #{@batch_size}" unless @batch_size.positive?

      @concurrency = concurrency || config.concurrency
      raise ArgumentError, "concurrency must be a positive Integer, got #{@concurrency.inspect}" unless @concurrency.is_a?(Integer) && @concurrency.positive?
      raise ArgumentError, "partition_by must respond to #call(event)" unless partition_by.nil? || partition_by.respond_to?(:call)

      @partition_by = partition_by

      @stop = false
      @native = nil
      @pool = nil
      @middleware = Middleware.new
    end

    # Middleware for this consumer only (after config.consumer_middleware; see Middleware).
    # Takes effect at the next run!.
    def use(klass, *args, &block)
      @middleware.use(klass, *args, &block)
      self
    end

    # Processes messages until stop! (or SIGTERM/SIGINT when run on the main thread).
    # Raises ConsumerError, touching nothing, while this consumer's run! is under way.
    def run!
      Running.add(self)
      begin
        @stop = false
        @settings = Settings.from(JetstreamBridge.config, @middleware)
        Signals.stopping(self) do
          @native = start_pull_loop
          Connection.drain_events
          if @native
            Running.on_start&.call
            run_pool
          end
        end
      ensure
        @native&.stop
        Connection.drain_events
        Running.remove(self)
      end
      self
    end

    # For a process about to exit while a handler still runs (a Supervisor worker past
    # config.shutdown_timeout), from another thread: gives back at once every message this
    # consumer holds whose handler has not started (the rest of the unit in hand, the
    # pool's queue, the core's prefetch) and flushes the settlements queued so far. The
    # messages whose handlers are still running are left alone: the server delivers them
    # again after ack_wait.
    def give_back_unstarted!
      native = @native or return
      @pool&.give_back_unstarted
      native.stop
    end

    # Ends run! after the message in hand: it is settled, the rest are returned to the
    # server. Safe from a signal handler (it only sets a flag, wakes the loop and calls
    # Running.on_stop, trap-safe too).
    def stop!
      @stop = true
      @native&.request_stop
      Running.on_stop&.call
      true
    end

    def stopped?
      @stop
    end

    # Creates or updates the durable as run! would with auto_provision (JetstreamBridge.provision!);
    # returns [action, changes].
    def provision_durable!
      report = Connection.client.ensure_consumer(loop_options)
      [report.action, report.changes]
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
      deadline = Background.monotonic + seconds
      sleep 0.05 until @stop || Background.monotonic >= deadline
    end

    def run_pool
      processor = Processor.new(@handler, @settings, @native, @durable_name)
      @pool = Pool.new(self, @native, processor, concurrency: @concurrency, batch_size: @batch_size, partition_by: @partition_by,
                                                 max_handler_time: JetstreamBridge.config.max_handler_time_ms / 1000.0)
      @pool.run
    ensure
      @pool = nil
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

    # config.delivery_subject is the configured durable's: a push consumer on another
    # durable (durable_name:) delivering there too would be sent that durable's messages.
    def check_delivery_subject!(config)
      return unless config.push_consumer? && config.delivery_subject && @durable_name != config.durable_name

      raise ArgumentError, "durable_name #{@durable_name}: config.delivery_subject (#{config.delivery_subject}) belongs to the durable " \
                           "#{config.durable_name}, and two push durables must not share a delivery subject; leave delivery_subject nil " \
                           "(each durable then delivers to {subscribe subject}.{durable})"
    end

    # stream_spec: the stream to make again when it is gone (with auto_provision only).
    def loop_options
      config = JetstreamBridge.config
      push = config.push_consumer?
      Native::LoopOptions.new(
        stream: config.stream_name, durable: @durable_name,
        filter_subject: config.destination_subject, ack_wait_ms: config.ack_wait_ms,
        max_deliver: server_max_deliver(config), max_ack_pending: [@batch_size * 4, MIN_ACK_PENDING].max,
        batch_size: @batch_size, dlq_subject: (config.dlq_subject if config.use_dlq),
        stream_spec: (config.stream_spec if config.auto_provision), provision: config.auto_provision,
        max_handler_time_ms: config.max_handler_time_ms,
        verify: config.verify_topology != false, concurrency: @concurrency,
        consumer_mode: push ? :push : :pull, delivery_subject: (config.delivery_subject_for(@durable_name) if push),
        deliver_group: (config.deliver_group_for(@durable_name) if push)
      )
    end
  end
end
