# frozen_string_literal: true

# Publish throughput of the bridge beside raw async-nats, against one local server, with
# ~1 KB events: acked one at a time, and publish_batch with 256 acks in flight.
# Rounds alternate bridge and reference runs, so both see the same machine; the ratio
# printed is the median of the per-round ratios (a shared 2-core VM drifts ±20%). The
# reference runs on both of tokio's runtimes; the bridge is held to the faster.
#   ruby -Ilib bench/publish_bench.rb [serial_count] [batch_count] [rounds]
require_relative "support"

serial_count = Integer(ARGV[0] || 5_000)
batch_count = Integer(ARGV[1] || 50_000)
rounds = Integer(ARGV[2] || 5)
data = "x" * 900

Bench.build_reference!
Bench.configure(env: "pubbench")
subject = JetstreamBridge.config.source_subject
event = ->(i) { { event_type: "bench.created", payload: { id: i, data: data } } }

# Warm up both sides (connection, stream, code paths).
500.times { |i| JetstreamBridge.publish(**event.call(i)) }
Bench::RUNTIMES.each { |runtime| Bench.reference(runtime, "publish-serial", Bench.server.url, subject, 500, data.bytesize) }

serial = Bench.paired_rounds(rounds, ->(_) { ["publish-serial", Bench.server.url, subject, serial_count, data.bytesize] }) do
  Bench.rate(serial_count) { serial_count.times { |i| JetstreamBridge.publish(**event.call(i)) } }
end
events = Array.new(batch_count) { |i| event.call(i) }
batch_args = ["publish-batch", Bench.server.url, subject, batch_count, data.bytesize, 256]
batch = Bench.paired_rounds(rounds, ->(_) { batch_args }) do
  Bench.rate(batch_count) do
    result = JetstreamBridge.publish_batch(events, window: 256)
    raise "batch failures: #{result.failed.first(3)}" unless result.success?
  end
end

puts "nats-server #{Bench.server.version}, ~1 KB events, median of #{rounds} paired rounds"
puts Bench.header
puts Bench.paired_row("publish, one at a time (acked)", serial, 0.9)
puts Bench.paired_row("publish_batch, 256 acks in flight", batch, 0.75)
