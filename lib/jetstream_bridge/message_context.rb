# frozen_string_literal: true

module JetstreamBridge
  # What is known about the message a handler is running for:
  # `JetstreamBridge::MessageContext.current` inside a handler or middleware (nil
  # elsewhere), the `context` argument of middleware, and the fourth argument of a handler
  # whose `call` takes one.
  class MessageContext
    # The thread-local slot. A consumer stores the raw message there (a Native::Message: no
    # allocation per message); `current` turns it into a MessageContext when someone asks.
    KEY = :__jetstream_bridge_message_context
    RUN_KEY = :__jetstream_bridge_message_source

    attr_reader :event, :subject, :deliveries, :msg_id, :stream_seq, :stream, :consumer_name

    # headers: a Hash, or nil to read them from `source` (the consumer's core handle) by
    # `id`, at once: the core forgets them when the message is settled, and a context may
    # be kept longer. A consumer makes a context only when someone asks for one.
    def initialize(event:, subject:, deliveries:, msg_id: nil, stream_seq: nil, stream: nil, consumer_name: nil,
                   headers: nil, source: nil, id: nil)
      @event = event
      @subject = subject
      @deliveries = deliveries
      @msg_id = msg_id
      @stream_seq = stream_seq
      @stream = stream
      @consumer_name = consumer_name
      @headers = (headers || source&.headers(id) || {}).freeze
      @duplicate = false
    end

    # The message's NATS headers ({ "Nats-Msg-Id" => ..., "traceparent" => ... }), frozen.
    attr_reader :headers

    # The envelope's event_id, else the Nats-Msg-Id header.
    def event_id
      id = event["event_id"] if event.is_a?(Hash)
      id.nil? || id.to_s.empty? ? msg_id : id.to_s
    end

    def event_type = (event["event_type"] if event.is_a?(Hash))

    # Set by the inbox when the event was processed before (the handler is not called).
    def duplicate! = (@duplicate = true)

    def duplicate? = @duplicate

    def to_h
      { event_id: event_id, event_type: event_type, subject: subject, deliveries: deliveries, stream: stream,
        stream_seq: stream_seq, msg_id: msg_id, consumer_name: consumer_name, headers: headers }
    end

    def inspect = "#<#{self.class.name} #{to_h.except(:headers).map { |k, v| "#{k}=#{v.inspect}" }.join(' ')}>"

    class << self
      # The context of the message being handled on this thread, or nil.
      def current
        value = Thread.current[KEY]
        return value unless value.is_a?(Native::Message)

        Thread.current[KEY] = Thread.current[RUN_KEY].context_for(value)
      end
    end
  end
end
