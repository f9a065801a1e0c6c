# frozen_string_literal: true

module JetstreamBridge
  module Testing
    # Stands in for the core's pull loop under the consumer's Processor, so that a test
    # delivery takes the real path (envelope checks, middleware, inbox, executor, error
    # reporting, DLQ decision) and only the settling is recorded instead of sent.
    class Settler
      # The delivery in progress: what a dead letter records, and the headers it carries.
      Delivery = Struct.new(:subject, :event, :headers)

      def initialize(testing, handler, config)
        @testing = testing
        @processor = Consumer::Processor.new(handler, Consumer::Settings.from(config), self, config.durable_name)
        @delivery = nil
      end

      # One delivery of an envelope (a Hash, as the consumer decodes it); the outcome.
      def deliver(subject, envelope, headers, deliveries)
        # Each delivery decodes the body anew in a real consumer: the handler gets its own copy.
        event = JSON.parse(JSON.generate(envelope))
        @delivery = Delivery.new(subject, event, headers || {})
        message = Native::Message.new(id: 1, subject: subject, event: event, deliveries: deliveries,
                                      msg_id: headers&.fetch("Nats-Msg-Id", nil))
        @processor.process(message, instrumented: Instrumentation.listening?(Consumer::Processor::PROCESS_EVENT))
      end

      def headers(_id) = @delivery.headers

      def ack(_id) = true

      def returned(_id) = nil

      def nak(_id, _delay_ms) = true

      # Dropped at max_deliver with use_dlq off.
      def term(_id)
        @testing.dead_lettered(DeadLetter.new(event: @delivery.event, subject: @delivery.subject, outcome: :term))
        true
      end

      def dead_letter(_id, reason, error_class, error_message)
        @testing.dead_lettered(DeadLetter.new(event: @delivery.event, subject: @delivery.subject, outcome: :dead_letter,
                                              reason: reason, error_class: error_class, error_message: error_message))
        true
      end
    end
  end
end
