# frozen_string_literal: true

module JetstreamBridge
  class Consumer
    # Handles one delivered message: checks the envelope, runs the handler through the
    # middleware chain, and settles the message with `settler` (the core's pull loop, or
    # Testing's recorder): ack on success, NAK with the backoff delay on failure,
    # dead-letter on max_deliver, unrecoverable errors and malformed bodies. Returns the
    # outcome (:ack, :nak, :dead_letter, :term, :skipped_duplicate).
    class Processor
      PROCESS_EVENT = "process.jetstream_bridge"
      DEAD_LETTER_EVENT = "dead_letter.jetstream_bridge"

      attr_reader :settings, :consumer_name

      def initialize(handler, settings, settler, consumer_name)
        @handler = handler
        @settings = settings
        @settler = settler
        @consumer_name = consumer_name
        @chain = settings.wrappers
        @arguments = HandlerSignature.arguments(handler)
      end

      # message: a Native::Message, as the core's next_batch returns it. `instrumented`: whether process.jetstream_bridge has
      # a subscriber (checked once per batch by the caller). `failure`: an error raised
      # for this message before its handler (the Pool's partition_by): settled as if the
      # handler had raised it, and the handler is not called. `acks`: an Array when the
      # message runs in a unit of batch hooks (the inbox's transaction): its ack is added
      # there, to be sent once the unit completes, instead of now.
      def process(message, instrumented: false, failure: nil, acks: nil)
        # The raw message is the current context until someone asks for a MessageContext.
        # The previous ones are restored after: a handler may deliver another message on
        # this thread (Testing.inline!).
        thread = Thread.current
        outer_message = thread[MessageContext::KEY]
        outer_source = thread[MessageContext::RUN_KEY]
        thread[MessageContext::KEY] = message
        thread[MessageContext::RUN_KEY] = self
        return settle(message, nil, failure, acks) unless instrumented

        payload = process_payload(message)
        Instrumentation.instrument(PROCESS_EVENT, payload) { payload[:outcome] = settle(message, payload, failure, acks) }
      ensure
        thread[MessageContext::KEY] = outer_message
        thread[MessageContext::RUN_KEY] = outer_source
      end

      # The MessageContext of a raw message (see MessageContext.current).
      def context_for(message)
        MessageContext.new(event: message.event, subject: message.subject, deliveries: message.deliveries,
                           msg_id: message.msg_id, stream_seq: message.stream_seq, stream: @settings.stream,
                           consumer_name: @consumer_name, source: @settler, id: message.id)
      end

      # What a batch hook (the inbox's around_batch) is told about each message before any
      # handler runs: no headers (not read for this).
      def batch_context(message)
        MessageContext.new(event: message.event, subject: message.subject, deliveries: message.deliveries,
                           msg_id: message.msg_id, stream_seq: message.stream_seq, stream: @settings.stream,
                           consumer_name: @consumer_name, headers: NO_HEADERS, id: message.id)
      end

      NO_HEADERS = {}.freeze

      private

      def process_payload(message)
        context = MessageContext.current
        headers = context.headers
        { event_id: context.event_id, event_type: context.event_type, subject: context.subject, stream: context.stream,
          stream_seq: context.stream_seq, deliveries: context.deliveries, consumer_name: @consumer_name,
          traceparent: headers["traceparent"], tracestate: headers["tracestate"], outcome: nil }
      end

      def settle(message, payload, failure, acks)
        id = message.id
        subject = message.subject
        event = message.event
        deliveries = message.deliveries
        problem = message.decode_error || envelope_problem(event)
        return dead_letter(id, "malformed", MalformedMessageError.name, problem, deliveries, subject, payload) if problem
        if deliveries > @settings.max_deliver
          return dead_letter(id, "max_deliver", DeliveryLimitError.name, over_limit(deliveries), deliveries, subject, payload)
        end

        raise failure if failure

        outcome = run_handler(event, subject, deliveries)
        if acks
          @settler.returned(id) # acked once the unit completes; no longer a running handler
          acks << id
        else
          @settler.ack(id)
        end
        outcome
      rescue *@settings.unrecoverable_errors => e
        failed(e, payload)
        dead_letter(id, "unrecoverable", e.class.name, e.message, deliveries, subject, payload)
      rescue StandardError, ScriptError, SystemStackError => e
        # ScriptError (NotImplementedError, LoadError) and deep recursion are handler bugs,
        # retried like any failure: they must not end the loop.
        failed(e, payload)
        handler_failed(id, e, deliveries, subject, payload)
      rescue Exception => e # rubocop:disable Lint/RescueException
        # exit, a signal, NoMemoryError, a bare Exception: settled like any failure (retried
        # after the backoff, dead-lettered at max_deliver, never abandoned), then it ends run!.
        # Thread#kill raises nothing: run!'s ensure gives the message back.
        Instrumentation.emit("error", "handler_aborted",
                             "handler raised #{e.class} (not a StandardError) on #{subject} (delivery #{deliveries}/#{@settings.max_deliver}); " \
                             "the message is settled as a failure and run! ends: #{e.message}")
        failed(e, payload)
        handler_failed(id, e, deliveries, subject, payload)
        raise
      end

      # :ack, or :skipped_duplicate when the inbox had processed the event already.
      def run_handler(event, subject, deliveries)
        if @chain.empty?
          HandlerSignature.invoke(@handler, @arguments, event, subject, deliveries)
          return :ack
        end
        context = MessageContext.current
        Handling.call(@handler, context, @chain, arguments: @arguments)
        context.duplicate? ? :skipped_duplicate : :ack
      end

      # A handler (or middleware) failure: in the payload, and to config.on_error once.
      def failed(error, payload)
        payload&.merge!(Instrumentation.error_fields(error))
        ErrorReporter.report(error, MessageContext.current)
      end

      def handler_failed(id, error, deliveries, subject, payload)
        if deliveries >= @settings.max_deliver
          dead_letter(id, "max_deliver", error.class.name, error.message, deliveries, subject, payload)
        else
          delay = @settings.delay_ms(deliveries)
          @settler.nak(id, delay)
          Instrumentation.emit("warn", "handler_failed",
                               "handler failed on #{subject} (delivery #{deliveries}/#{@settings.max_deliver}), retry in #{delay}ms: #{error.class}: #{error.message}")
          :nak
        end
      end

      def dead_letter(id, reason, error_class, error_message, deliveries, subject, payload)
        payload&.merge!(error_class: error_class.to_s, error_message: Native.redact(error_message.to_s)) unless payload&.key?(:error_class)
        if Instrumentation.listening?(DEAD_LETTER_EVENT)
          event = { event_id: MessageContext.current&.event_id, subject: subject, deliveries: deliveries, reason: reason,
                    error_class: error_class.to_s, error_message: Native.redact(error_message.to_s),
                    dlq_subject: @settings.dlq_subject, consumer_name: @consumer_name }
          Instrumentation.instrument(DEAD_LETTER_EVENT, event) { move_to_dlq(id, reason, error_class, error_message, deliveries, subject) }
        else
          move_to_dlq(id, reason, error_class, error_message, deliveries, subject)
        end
      end

      # :dead_letter, :term (use_dlq off), or :nak when the DLQ publish failed.
      def move_to_dlq(id, reason, error_class, error_message, deliveries, subject)
        if @settings.dlq_subject
          @settler.dead_letter(id, reason, error_class.to_s, error_message.to_s)
          Instrumentation.emit("warn", "dead_lettered",
                               "message on #{subject} moved to #{@settings.dlq_subject} (#{reason}, delivery #{deliveries}): #{error_class}: #{error_message}")
          :dead_letter
        else
          @settler.term(id)
          Instrumentation.emit("error", "terminated",
                               "message on #{subject} dropped (#{reason}, delivery #{deliveries}; use_dlq is off): #{error_class}: #{error_message}")
          :term
        end
      rescue DlqRoutingFailedError => e
        # The original is kept: back to the server, redelivered after the backoff delay (the
        # durable has no server-side delivery limit with use_dlq: see server_max_deliver),
        # and dead-lettered again then.
        @settler.nak(id, @settings.delay_ms(deliveries))
        Instrumentation.emit("error", "dlq_failed", "#{e.message}; message on #{subject} kept, dead-lettered again on its next delivery")
        :nak
      end

      # Past max_deliver: the handler is not called again. It happens when an earlier
      # dead-letter publish failed, or the process died while handling the message.
      def over_limit(deliveries)
        "delivered #{deliveries} times (max_deliver #{@settings.max_deliver}) without being settled: " \
          "an earlier dead-letter publish failed or the worker stopped mid-message"
      end

      def envelope_problem(event)
        return "body is not an event envelope (expected a JSON object)" unless event.is_a?(Hash)
        return "event envelope has no event_type" unless event["event_type"].is_a?(String)
        return "event envelope has no payload" unless event.key?("payload")

        version = event["schema_version"]
        return "event envelope has schema_version #{version.inspect}; this bridge reads version 1" unless version.nil? || version == 1

        nil
      end
    end
  end
end
