# frozen_string_literal: true

require "json"
require_relative "../support/consumer_helpers"

# A message at its last delivery must reach the DLQ whatever it carries, and a DLQ
# publish that fails must leave the message to be dead-lettered later, never released to
# nowhere (the server delivers a message no more once its delivery limit is reached).
RSpec.describe "Dead-lettering at the last delivery" do
  include ConsumerHelpers

  after { stop_consumers }

  def settled?
    (info = consumer_info) && info["num_ack_pending"].zero? && info["num_pending"].zero?
  end

  it "leaves the durable without a server-side delivery limit when use_dlq is on (the bridge counts)" do
    configure_bridge(use_dlq: true, max_deliver: 4)
    run_recording_consumer
    expect(eventually { consumer_info }["config"]["max_deliver"]).to eq(-1)
  end

  it "stores the copy of an event close to max_payload, with fewer headers, and terminates the original" do
    configure_bridge(use_dlq: true, max_deliver: 2, backoff: %w[50ms])
    max_payload = JetstreamBridge::Connection.client.server_info["max_payload"]
    id, = publish_incoming(1, payload: { id: 1, blob: "x" * (max_payload - 700) })
    _, calls = run_recording_consumer { |_| raise "downstream unavailable: #{'timeout ' * 200}" }

    eventually(timeout: 10) { dlq_messages.size == 1 }
    eventually { settled? }
    expect(calls.for(id).map(&:deliveries)).to eq([1, 2])
    _, body, headers = dlq_messages.first
    expect(JSON.parse(body)["event_id"]).to eq(id)
    expect(headers).to include("X-Dead-Letter-Reason" => "max_deliver", "X-Original-Subject" => dest_subject)
    expect(headers["Nats-Msg-Id"]).to start_with("dlq:#{stream_name}:")
    expect(log_output).not_to include("dlq_failed")
  end

  it "bounds the error text it adds" do
    configure_bridge(use_dlq: true, max_deliver: 1)
    publish_incoming(1)
    run_recording_consumer { |_| raise "é#{'x' * 5000}" }

    eventually(timeout: 10) { dlq_messages.size == 1 }
    message = dlq_messages.first[2]["X-Error-Message"]
    expect(message).to start_with("éxxx")
    expect(message.bytesize).to be <= 512
  end

  it "never copies the original's publish preconditions onto the DLQ publish" do
    configure_bridge(use_dlq: true, max_deliver: 3)
    JetstreamBridge.ensure_topology!
    envelope = ->(id) { JSON.generate(event_id: id, schema_version: 1, event_type: "created", payload: { id: 1 }) }
    NatsApi.publish_with_headers(bridge_url, dest_subject, envelope.call("a"), { "Nats-Msg-Id" => "a" })
    ack = NatsApi.publish_with_headers(bridge_url, dest_subject, envelope.call("b"),
                                       { "Nats-Msg-Id" => "b", "Nats-Expected-Last-Msg-Id" => "a", "X-App" => "kept" })
    expect(ack["error"]).to be_nil
    run_recording_consumer { |_| raise ArgumentError, "invalid order" } # unrecoverable: DLQ at once

    eventually(timeout: 10) { dlq_messages.size == 2 }
    eventually { settled? }
    copies = dlq_messages.to_h { |_, _, headers| [headers["X-Original-Msg-Id"], headers] }
    expect(copies.keys).to contain_exactly("a", "b")
    expect(copies["b"]).not_to have_key("Nats-Expected-Last-Msg-Id")
    expect(copies["b"]["X-App"]).to eq("kept")
  end

  it "keeps a message whose DLQ publish failed at its last delivery, and dead-letters it once the DLQ works" do
    configure_bridge(use_dlq: true, max_deliver: 2, backoff: %w[200ms])
    JetstreamBridge.ensure_topology!
    info = NatsApi.request(bridge_url, "$JS.API.STREAM.INFO.#{stream_name}")
    with_dlq = info["config"]
    without_dlq = with_dlq.merge("subjects" => with_dlq["subjects"] - [dlq_subject])
    NatsApi.request(bridge_url, "$JS.API.STREAM.UPDATE.#{stream_name}", without_dlq) # DLQ publishes fail now
    id, = publish_incoming(1)
    _, calls = run_recording_consumer { |_| raise "broken" }

    eventually(timeout: 10) { log_output.scan(/ERROR.*dead-letter publish.*failed/).size >= 2 }
    expect(dlq_messages).to be_empty
    NatsApi.request(bridge_url, "$JS.API.STREAM.UPDATE.#{stream_name}", with_dlq)

    eventually(timeout: 10) { dlq_messages.size == 1 }
    eventually { settled? }
    expect(calls.for(id).map(&:deliveries)).to eq([1, 2]) # the handler is not called past max_deliver
    headers = dlq_messages.first[2]
    expect(headers).to include("X-Dead-Letter-Reason" => "max_deliver", "X-Original-Msg-Id" => id,
                               "X-Error-Class" => "JetstreamBridge::DeliveryLimitError")
    expect(log_output).to match(/kept, dead-lettered again on its next delivery/)
  end
end
