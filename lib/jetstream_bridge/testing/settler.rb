# frozen_string_literal: true

module JetstreamBridge
  module Testing
    # Stands in for the core's pull loop under the consumer's Processor, so that a test
    # delivery takes the real path (envelope checks, middleware, inbox, executor, error
    # reporting, DLQ decision) and only the settling is recorded instead of sent.
    class Settler
      def initialize(testing, handler, config)
        @testing = testing
        @processor = Consumer::Processor.new(handler, Consumer::Settings.from(config), self, config.durable_name)
        @delivery = nil
      end

      # One delivery of an envelope (a Hash, as the consumer decodes it); the outcome.
      def deliver(subject, envelope, headers, deliveries)
        # Each delivery decodes the body anew in a real consumer: the handler gets its own copy.
        event = JSON.parse(JSON.generate(envelope))
        @delivery = [subject, event, headers || {}]
        message = [1, subject, event, deliveries, nil, headers&.fetch("Nats-Msg-Id", nil), nil]
        @processor.process(message, instrumented: Instrumentation.listening?(Consumer::Processor::PROCESS_EVENT))
      end

      def headers(_id) = @delivery[2]

      def ack(_id) = true

      def returned(_id) = nil

      def nak(_id, _delay_ms) = true

      # Dropped at max_deliver with use_dlq off.
      def term(_id)
        subject, event, = @delivery
        @testing.dead_lettered(DeadLetter.new(event: event, subject: subject, outcome: :term))
        true
      end

      def dead_letter(_id, reason, error_class, error_message)
        subject, event, = @delivery
        @testing.dead_lettered(DeadLetter.new(event: event, subject: subject, outcome: :dead_letter, reason: reason,
                                              error_class: error_class, error_message: error_message))
        true
      end
    end
  end
end
