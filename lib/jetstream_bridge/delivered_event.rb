# frozen_string_literal: true

require "time"

module JetstreamBridge
  # What a handler that takes one argument gets (`def call(event)`, as handlers written for
  # the pure-Ruby jetstream_bridge 7.x are): the envelope Hash itself, so event["payload"]
  # reads as the README documents, that also reads as that gem's event object does:
  # event.payload (method-style: event.payload.id), event.event_type (and event.type),
  # event_id, resource_type, resource_id, producer, trace_id, schema_version, occurred_at (a
  # Time), subject, deliveries, stream, sequence and metadata. Only such handlers pay for it
  # (a copy of the envelope's top level).
  class DeliveredEvent < Hash
    # Delivery facts, as the pure-Ruby gem's Event::Metadata (timestamp: when the event was
    # handed to the handler).
    Metadata = Struct.new(:subject, :deliveries, :stream, :sequence, :consumer, :timestamp, keyword_init: true) do
      def to_h = super.compact
    end

    # The payload Hash (its own copy) read by method (payload.user_id) too, and by Symbol
    # or String key alike ([:id], ["id"], dig, fetch), as the pure-Ruby gem's payload reads.
    class Payload < Hash
      def initialize(payload)
        super()
        replace(payload)
      end

      def [](key) = super(key.is_a?(Symbol) ? key.name : key)
      def fetch(key, *default, &block) = super(key.is_a?(Symbol) ? key.name : key, *default, &block)
      def key?(key) = super(key.is_a?(Symbol) ? key.name : key)
      def dig(*keys) = super(*keys.map { |key| key.is_a?(Symbol) ? key.name : key })

      def method_missing(name, *args)
        return self[name] if args.empty? && key?(name)

        super
      end

      def respond_to_missing?(name, include_private = false) = key?(name) || super
    end

    attr_reader :subject, :deliveries

    # `context`: the message's MessageContext (stream, sequence, consumer), or nil.
    def initialize(envelope, subject, deliveries, context = nil)
      super()
      replace(envelope)
      @subject = subject
      @deliveries = deliveries
      @context = context
      @handed_at = Time.now.utc
    end

    # The payload as a Payload when it is a Hash (event["payload"] stays the plain Hash).
    def payload
      value = self["payload"]
      @payload ||= value.is_a?(Hash) ? Payload.new(value) : value
    end

    def event_type = self["event_type"]
    alias type event_type # the pure-Ruby gem's name for it
    def event_id = self["event_id"]
    def resource_type = self["resource_type"]
    def resource_id = self["resource_id"]
    def producer = self["producer"]
    def trace_id = self["trace_id"]
    def schema_version = self["schema_version"] || 1

    # A Time (the pure-Ruby gem's reading); nil when absent or not a time.
    # event["occurred_at"] is the String as sent.
    def occurred_at
      value = self["occurred_at"]
      value.is_a?(String) ? Time.iso8601(value) : value
    rescue ArgumentError
      nil
    end

    def metadata
      @metadata ||= Metadata.new(subject: subject, deliveries: deliveries, stream: @context&.stream, sequence: @context&.stream_seq,
                                 consumer: @context&.consumer_name, timestamp: @handed_at)
    end

    def stream = metadata.stream
    def sequence = metadata.sequence

    # The envelope as a plain Hash (the pure-Ruby gem's to_envelope).
    def to_envelope = to_h
  end
end
