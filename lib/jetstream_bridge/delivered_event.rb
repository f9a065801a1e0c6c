# frozen_string_literal: true

module JetstreamBridge
  # What a handler that takes one argument gets (`def call(event)`, as handlers written for
  # the pure-Ruby jetstream_bridge 7.x are): the envelope Hash itself, so event["payload"]
  # reads as the README documents, that also answers event.payload, event.event_type (and
  # event.type), event.event_id, event.resource_type, event.resource_id, event.occurred_at,
  # event.subject and event.deliveries. Only such handlers pay for it (a copy of the
  # envelope's top level).
  class DeliveredEvent < Hash
    attr_reader :subject, :deliveries

    def initialize(envelope, subject, deliveries)
      super()
      replace(envelope)
      @subject = subject
      @deliveries = deliveries
    end

    def payload = self["payload"]
    def event_type = self["event_type"]
    def event_id = self["event_id"]
    def resource_type = self["resource_type"]
    def resource_id = self["resource_id"]
    def occurred_at = self["occurred_at"]
    alias type event_type # the pure-Ruby gem's name for it
  end
end
