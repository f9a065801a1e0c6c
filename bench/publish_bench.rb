# frozen_string_literal: true

# Publish throughput of the bridge beside raw async-nats, against one local server, with
# ~1 KB events: acked one at a time, and publish_batch with 256 acks in flight.
#   ruby -Ilib bench/publish_bench.rb [serial_count] [batch_count]
require_relative "support"

serial_count = Integer(ARGV[0] || 20_000)
batch_count = Integer(ARGV[1] || 100_000)
data = "x" * 900

Bench.build_reference!
Bench.configure(env: "pubbench")
subject = JetstreamBridge.config.source_subject
event = ->(i) { { event_type: "bench.created", payload: { id: i, data: data } } }

# Warm up both sides (connection, stream, JIT-free Ruby paths).
500.times { |i| JetstreamBridge.publish(**event.call(i)) }
Bench.reference("publish-serial", Bench.server.url, subject, 500, data.bytesize)

best = Hash.new(0.0)
2.times do
  best[:serial] = [best[:serial], Bench.rate(serial_count) { serial_count.times { |i| JetstreamBridge.publish(**event.call(i)) } }].max
  best[:serial_ref] = [best[:serial_ref], Bench.reference("publish-serial", Bench.server.url, subject, serial_count, data.bytesize)].max
  events = Array.new(batch_count) { |i| event.call(i) }
  best[:batch] = [best[:batch], Bench.rate(batch_count) do
    result = JetstreamBridge.publish_batch(events, window: 256)
    raise "batch failures: #{result.failed.first(3)}" unless result.success?
  end].max
  best[:batch_ref] = [best[:batch_ref], Bench.reference("publish-batch", Bench.server.url, subject, batch_count, data.bytesize, 256)].max
end

puts "nats-server #{Bench.server.version}, ~1 KB events, best of 2 runs each"
puts Bench.header
puts Bench.row("publish, one at a time (acked)", best[:serial], best[:serial_ref], 0.9)
puts Bench.row("publish_batch, 256 acks in flight", best[:batch], best[:batch_ref], 0.75)
