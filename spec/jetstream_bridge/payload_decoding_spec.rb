# frozen_string_literal: true

require "json"
require_relative "../support/consumer_helpers"

# What a handler receives is what JSON.parse makes of the stored body: a differential check
# over numbers at and past every limit (64-bit integers, f64 range and precision).
RSpec.describe "Decoding consumed events" do
  include ConsumerHelpers

  after { stop_consumers }

  NUMBERS = [
    "0", "-0", "-0.0", "1", "-1", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551615", "18446744073709551616", "18446744073709551617",
    "-18446744073709551617", "1#{'0' * 400}", "-1#{'0' * 400}", "1e400", "-1e400", "1.5e-400", "1E2", "1e+2",
    "2.5E-3", "0.1", "0.1000000000000000055511151231257827", "123456789012345678901234567890.5",
    "1.7976931348623157e308", "4.9e-324", "2.2250738585072011e-308", "9007199254740993", "1.0e19", "1e19",
    "100000000000000000000000.0", "3.141592653589793238462643383279", "-2.5e-5", "7e22", "8.98846567431158e307"
  ].freeze

  def envelope(id, payload_json)
    %({"event_id":"#{id}","schema_version":1,"event_type":"created","producer":"other","resource_type":"n",) +
      %("payload":#{payload_json}})
  end

  it "hands the handler every number exactly as JSON.parse reads it" do
    configure_bridge(use_dlq: true)
    JetstreamBridge.ensure_topology!
    bodies = NUMBERS.each_with_index.map { |number, i| envelope("n#{i}", %({"id":#{i},"value":#{number},"list":[#{number}]})) }
    bodies << envelope("mixed", %({"a":{"b":[1,18446744073709551617,{"c":"1e400 as text"}]},"d":-1e400,"e":0.5}))
    bodies.each { |body| publish_raw_body(body) }
    _, calls = run_recording_consumer

    eventually(timeout: 10) { calls.size == bodies.size }
    expect(dlq_messages).to be_empty
    received = calls.to_a.to_h { |c| [c.id, c.event] }
    bodies.each do |body|
      expected = JSON.parse(body)
      expect(received.fetch(expected["event_id"]).inspect).to eq(expected.inspect), "for #{body[0, 200]}"
    end
    expect(received.fetch("n11")["payload"]["value"]).to eq(2**64 + 1)
    expect(received.fetch("n13")["payload"]["value"]).to eq(10**400)
  end

  it "builds objects of any size as JSON.parse does: key order, repeated keys (the last wins), nesting" do
    configure_bridge(use_dlq: true)
    JetstreamBridge.ensure_topology!
    wide = (1..40).map { |i| %("k#{i}":{"n":#{i},"s":"#{'z' * i}","l":[#{i},{"in":#{i}}]}) }.join(",")
    bodies = {
      "wide" => envelope("wide", "{#{wide}}"),
      "repeated" => envelope("repeated", %({"a":1,"b":2,"a":3,#{(1..20).map { |i| %("r#{i % 7}":#{i}) }.join(',')}})),
      "nested" => envelope("nested", "#{'{"d":' * 30}{}#{'}' * 30}"),
      "empty" => envelope("empty", "{}")
    }
    bodies.each_value { |body| publish_raw_body(body) }
    _, calls = run_recording_consumer

    eventually(timeout: 10) { calls.size == bodies.size }
    received = calls.to_a.to_h { |c| [c.id, c.event] }
    bodies.each do |id, body|
      expect(received.fetch(id).inspect).to eq(JSON.parse(body).inspect), "for #{id}"
    end
    expect(received.fetch("repeated")["payload"].keys.first(2)).to eq(%w[a b])
    expect(received.fetch("wide")["payload"].size).to eq(40)
  end

  it "still dead-letters a body that is not JSON after a big number" do
    configure_bridge(use_dlq: true)
    JetstreamBridge.ensure_topology!
    publish_raw_body(%({"event_id":"bad","event_type":"x","payload":{"n":18446744073709551617,}))
    _, calls = run_recording_consumer

    eventually(timeout: 10) { dlq_messages.size == 1 }
    expect(calls.size).to eq(0)
    expect(dlq_messages.first[2]["X-Error-Message"]).to start_with("body is not valid JSON")
  end
end
