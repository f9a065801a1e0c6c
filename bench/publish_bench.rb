# frozen_string_literal: true

# Publish throughput of the bridge beside raw async-nats, against one local server, with
# a realistic ~1 KB event (Bench.payload: twelve fields, non-ASCII, nested): acked one at
# a time, publish_batch of the whole run at once, and publish_batch in slices of 1,000
# (what apps send), with 256 acks in flight; CPU microseconds per event for both sides.
# Rounds alternate bridge and reference runs, so both see the same machine; the ratio
# printed is the median of the per-round ratios (a shared 2-core VM drifts ±20%). The
# reference runs on both of tokio's runtimes; the bridge is held to the faster.
#   ruby -Ilib bench/publish_bench.rb [serial_count] [batch_count] [rounds]
require_relative "support"

serial_count = Integer(ARGV[0] || 5_000)
batch_count = Integer(ARGV[1] || 50_000)
rounds = Integer(ARGV[2] || 5)
bio = "x" * Bench::BIO_BYTES

Bench.build_reference!
Bench.configure(env: "pubbench")
subject = JetstreamBridge.config.source_subject
event = ->(i) { Bench.event(i, bio) }

# Warm up both sides (connection, stream, code paths).
500.times { |i| JetstreamBridge.publish(**event.call(i)) }
Bench::RUNTIMES.each { |runtime| Bench.reference(runtime, "publish-serial", Bench.server.url, subject, 500, bio.bytesize) }

rows = []
serial = Bench.paired_rounds(rounds, ->(_) { ["publish-serial", Bench.server.url, subject, serial_count, bio.bytesize] }, events: serial_count) do
  Bench.rate(serial_count) { serial_count.times { |i| JetstreamBridge.publish(**event.call(i)) } }
end
rows << Bench.paired_row("publish, one at a time (acked)", serial, 0.8) << Bench.cpu_row
events = Array.new(batch_count) { |i| event.call(i) }
batch_args = ["publish-batch", Bench.server.url, subject, batch_count, bio.bytesize, 256]
{ "publish_batch, one batch of all" => batch_count, "publish_batch, slices of 1,000" => 1_000 }.each do |name, slice|
  batch = Bench.paired_rounds(rounds, ->(_) { batch_args }, events: batch_count) do
    Bench.rate(batch_count) do
      events.each_slice(slice) do |part|
        result = JetstreamBridge.publish_batch(part, window: 256)
        raise "batch failures: #{result.failed.first(3)}" unless result.success?
      end
    end
  end
  rows << Bench.paired_row(name, batch, 0.8) << Bench.cpu_row
end

# Where a slice of 1,000 goes, in ms (each phase over all the events, in slices of 1,000,
# median of `rounds` runs): the core building the events from their Hashes
# (Native.build_event, as publish_batch does before sending anything); publish_batch of
# the same events built before (the hand-off to the runtime thread, sending, the last
# acks); the reference sending pre-built bodies (the wire rate, no building); and one
# event's round trip (what waiting for the last acks adds at least).
defaults = JetstreamBridge::Event.defaults(JetstreamBridge.config)
built = events.map { |e| JetstreamBridge::Event.build(e) }
slices = batch_count / 1_000.0
per_slice = ->(&work) { Bench.median(Array.new(rounds) { 1_000 * batch_count / Bench.rate(batch_count, &work) / slices }) }
whole_ms = per_slice.() { events.each_slice(1_000) { |part| JetstreamBridge.publish_batch(part, window: 256) } }
build_ms = per_slice.() { events.each { |e| JetstreamBridge::Native.build_event(e, defaults) } }
send_ms = per_slice.() { built.each_slice(1_000) { |part| JetstreamBridge.publish_batch(part, window: 256) } }
wire_ms = Bench.median(Array.new(rounds) do
  Bench::RUNTIMES.map { |rt| 1e6 / Bench.reference(rt, *batch_args, "prebuilt") }.min
end)
trip_ms = Bench.median(Array.new(21) { 1_000 / Bench.rate(1) { JetstreamBridge.publish_batch([events.first], window: 256) } })
rows << format("  a slice of 1,000, ms: whole call %.2f; build %.2f, send of events built before %.2f (the wire rate, " \
               "the reference sending pre-built bodies: %.2f); one event's round trip %.2f",
               whole_ms, build_ms, send_ms, wire_ms, trip_ms)

puts "nats-server #{Bench.server.version}, realistic ~1 KB events, median of #{rounds} paired rounds"
puts Bench.header
puts rows
