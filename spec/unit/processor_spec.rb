# frozen_string_literal: true

require_relative "settler_double"

# The Processor's outcomes, one message at a time, through the settler seam: what it
# returns, how the message is settled, and whether the handler ran.
RSpec.describe JetstreamBridge::Consumer::Processor do
  let(:calls) { [] }
  let(:settler) { SettlerDouble.new }
  let(:handler) { ->(event, _subject, deliveries) { calls << [event["payload"]["id"], deliveries] } }

  before { configure_bridge(use_dlq: true, max_deliver: 3, backoff: %w[1s 5s], unrecoverable_errors: [KeyError]) }

  def processor(with = handler)
    described_class.new(with, JetstreamBridge::Consumer::Settings.from(JetstreamBridge.config), settler, "durable")
  end

  def envelope(id = 1)
    { "event_id" => "e-#{id}", "event_type" => "user.created", "schema_version" => 1, "payload" => { "id" => id } }
  end

  def message(id = 1, deliveries: 1, event: envelope(id), decode_error: nil)
    SettlerDouble.message(id, event, deliveries: deliveries, decode_error: decode_error)
  end

  it "acks a handled event" do
    expect(processor.process(message(1))).to eq(:ack)
    expect(settler.outcomes).to eq(1 => [:ack, nil])
    expect(calls).to eq([[1, 1]])
  end

  it "NAKs a failure with the backoff of that delivery (the last one repeating)" do
    failing = ->(*) { raise IOError, "down" }
    expect(processor(failing).process(message(1, deliveries: 1))).to eq(:nak)
    expect(processor(failing).process(message(2, deliveries: 2))).to eq(:nak)
    expect(settler.outcomes).to eq(1 => [:nak, 1000], 2 => [:nak, 5000])
  end

  it "dead-letters the last allowed delivery's failure, an unrecoverable error at once, and a malformed body without calling the handler" do
    expect(processor(->(*) { raise IOError, "down" }).process(message(1, deliveries: 3))).to eq(:dead_letter)
    expect(processor(->(*) { raise KeyError, "gone" }).process(message(2, deliveries: 1))).to eq(:dead_letter)
    expect(processor.process(message(3, event: { "payload" => {} }))).to eq(:dead_letter)
    expect(processor.process(message(4, event: nil, decode_error: "body is not JSON"))).to eq(:dead_letter)
    expect(settler.outcomes).to eq(1 => [:dead_letter, %w[max_deliver IOError]], 2 => [:dead_letter, %w[unrecoverable KeyError]],
                                   3 => [:dead_letter, ["malformed", "JetstreamBridge::MalformedMessageError"]],
                                   4 => [:dead_letter, ["malformed", "JetstreamBridge::MalformedMessageError"]])
    expect(calls).to be_empty
  end

  it "dead-letters a delivery past max_deliver without calling the handler; terminates instead with use_dlq off" do
    expect(processor.process(message(1, deliveries: 4))).to eq(:dead_letter)
    configure_bridge(max_deliver: 3, use_dlq: false)
    expect(processor(->(*) { raise IOError, "down" }).process(message(2, deliveries: 3))).to eq(:term)
    expect(settler.outcomes).to eq(1 => [:dead_letter, ["max_deliver", "JetstreamBridge::DeliveryLimitError"]], 2 => [:term, nil])
    expect(calls).to be_empty
  end

  it "settles a failure raised before the handler (partition_by) as the handler's, without calling it" do
    expect(processor.process(message(1), failure: ArgumentError.new("no key"))).to eq(:nak)
    expect(settler.outcomes).to eq(1 => [:nak, 1000])
    expect(calls).to be_empty
  end

  it "calls a one-argument handler with the event, readable by method too, with and without middleware" do
    seen = []
    one = ->(event) { seen << [event["payload"]["id"], event.payload["id"], event.event_type, event.subject, event.deliveries] }
    expect(processor(one).process(message(1, deliveries: 2))).to eq(:ack)
    pass_through = Class.new { def call(_event, _context) = yield }
    JetstreamBridge.config.consumer_middleware.use(pass_through)
    expect(processor(one).process(message(2))).to eq(:ack)
    expect(seen).to eq([[1, 1, "user.created", "s.user.created", 2], [2, 2, "user.created", "s.user.created", 1]])
  end

  it "in a unit, hands the ack to the unit instead of sending it" do
    acks = []
    expect(processor.process(message(1), acks: acks)).to eq(:ack)
    expect(acks).to eq([1])
    expect(settler.settled).to eq([[:returned, 1, nil]])
  end

  it "settles an Exception that is not a StandardError as a failure, then raises it" do
    expect { processor(->(*) { raise NoMemoryError, "boom" }).process(message(1)) }.to raise_error(NoMemoryError)
    expect(settler.outcomes).to eq(1 => [:nak, 1000])
  end

  it "keeps a message whose dead-letter publish failed: NAK with the backoff" do
    def settler.dead_letter(*) = raise(JetstreamBridge::DlqRoutingFailedError, "DLQ publish failed")
    expect(processor(->(*) { raise IOError, "down" }).process(message(1, deliveries: 3))).to eq(:nak)
    expect(settler.outcomes).to eq(1 => [:nak, 5000])
  end
end
