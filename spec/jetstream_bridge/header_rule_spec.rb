# frozen_string_literal: true

require "json"
require_relative "../support/consumer_helpers"

# The one rule for a header name a message carries more than once (NATS allows it; another
# client may send one so): its first value counts, in a consumer's MessageContext#headers
# and in a dead letter's headers alike, as the server itself reads Nats-Msg-Id.
RSpec.describe "A repeated header name" do
  include ConsumerHelpers

  after { stop_consumers }

  # Publishes an event onto the consumed subject as any client could: Nats-Msg-Id `msg_id`
  # first, then `pairs` ([[name, value], ...], names may repeat). Returns the JetStream ack.
  def publish_with(msg_id, pairs = [])
    json = JetstreamBridge::Native.build_envelope(msg_id, "user.created", "other", "user", "1", nil, nil, "{}").json
    ack = NatsApi.publish_with_headers(bridge_url, dest_subject, json, [["Nats-Msg-Id", msg_id], *pairs])
    raise "not stored: #{ack['error'].inspect}" if ack["error"]

    ack
  end

  it "reads as its first value through the consumer and through DeadLetters" do
    configure_bridge(use_dlq: true, max_deliver: 2)
    JetstreamBridge.ensure_topology!
    publish_with("dup-1", [%w[X-Dup first], %w[X-Dup second], %w[x-dup lower]])
    seen = []
    start_consumer(JetstreamBridge::Consumer.new do |*|
      seen << JetstreamBridge::MessageContext.current.headers
      raise ArgumentError, "unrecoverable: dead-letter it"
    end)
    eventually(timeout: 10) { JetstreamBridge::DeadLetters.list.any? }
    stop_consumers

    consumed = seen.first
    letter = JetstreamBridge::DeadLetters.list.first
    # The dead letter keeps every value (the raw read joins them): the rule is what reads it.
    _, _, stored = stored_message(letter.seq)
    expect(stored["X-Dup"]).to eq("first,second")
    expect(consumed).to include("X-Dup" => "first", "x-dup" => "lower", "Nats-Msg-Id" => "dup-1")
    expect(letter.headers).to include("X-Dup" => "first", "x-dup" => "lower")
    expect(letter.headers.slice("X-Dup", "x-dup")).to eq(consumed.slice("X-Dup", "x-dup"))
  end

  it "is the server's: a repeated Nats-Msg-Id deduplicates by its first value" do
    configure_bridge
    JetstreamBridge.ensure_topology!
    expect(publish_with("earlier", [%w[Nats-Msg-Id later]])["duplicate"]).to be_nil
    expect(publish_with("earlier")["duplicate"]).to be(true)
    expect(publish_with("later")["duplicate"]).to be_nil
  end
end
