# frozen_string_literal: true

require_relative "../support/consumer_helpers"

# Sequences outside what a stream can hold (unsigned 64-bit), against the shared real
# nats-server: the README promises ArgumentError naming the bad value, touching nothing;
# a RangeError from the core's u64 conversion must never escape (issue 22, item 11).
RSpec.describe JetstreamBridge::DeadLetters do
  include ConsumerHelpers

  after { stop_consumers }

  let(:dead_letters) { described_class }

  before do
    configure_bridge(use_dlq: true, max_deliver: 3)
    publish_incoming(1)
    consumer, = run_recording_consumer { |call| raise ArgumentError, "no handler for #{call.id}" }
    eventually(timeout: 10) { dlq_messages.size >= 1 && consumer_info["num_ack_pending"].zero? }
    consumer.stop!
    stop_consumers
  end

  it "raises ArgumentError naming a seq or `after` beyond 64 bits or below zero, touching nothing" do
    huge = 2**64
    { -> { dead_letters.replay(huge) } => /seq must be a positive Integer.*got 18446744073709551616\z/,
      -> { dead_letters.discard("18446744073709551616") } => /got "18446744073709551616"\z/,
      -> { dead_letters.find(2**70) } => /got #{2**70}\z/,
      -> { dead_letters.replay(-2**64) } => /got -18446744073709551616\z/,
      -> { dead_letters.list(after: -5) } => /after must be 0 or a stream sequence.*got -5\z/,
      -> { dead_letters.list(after: huge - 1) } => /got 18446744073709551615\z/, # after + 1 would not fit
      -> { dead_letters.list(after: "x") } => /after .*got "x"\z/,
      -> { dead_letters.list(after: nil) } => /after .*got nil\z/,
      -> { dead_letters.each(after: huge).to_a } => /got 18446744073709551616\z/ }.each do |call, message|
      expect(&call).to raise_error(ArgumentError, message)
    end
    expect(dead_letters.list.size).to eq(1) # nothing replayed or discarded
    # The largest valid values are accepted: nothing there, but no error.
    expect(dead_letters.find((2**64) - 1)).to be_nil
    expect(dead_letters.list(after: (2**64) - 2)).to eq([])
    expect(dead_letters.list(after: "0").size).to eq(1)
  end

  it "does not size a page by `limit` up front: a huge limit lists what is there" do
    expect(dead_letters.list(limit: 10**12).size).to eq(1)
  end
end
