# frozen_string_literal: true

# Consume throughput of the bridge (fetch, decode to a Ruby Hash, no-op handler, ack) of
# realistic ~1 KB events (Bench.payload), with CPU microseconds per event,
# beside a raw async-nats consumer doing fetch + JSON decode + ack, in the same run; then
# memory: RSS after 100,000 consumed events and after 1,000,000. Rounds alternate bridge
# and reference (each round a fresh durable reading the same events from the start); the
# ratio printed is the median of the per-round ratios, against the faster of the
# reference's two tokio runtimes.
#   ruby -Ilib bench/consume_bench.rb [throughput_count] [memory_count] [rounds]
require_relative "support"

count = Integer(ARGV[0] || 50_000)
memory_count = Integer(ARGV[1] || 1_000_000)
rounds = Integer(ARGV[2] || 3)
bio = "x" * Bench::BIO_BYTES

Bench.build_reference!
# Published by "producer" to "bench"; the bridge consumes as "bench".
Bench.configure(env: "conbench", app: "producer", dest: "bench", duplicate_window: "1s")

def fill(total, bio)
  (0...total).each_slice(20_000) do |slice|
    result = JetstreamBridge.publish_batch(slice.map { |i| Bench.event(i, bio) })
    raise "publish failed: #{result.failed.first(2)}" unless result.success?
  end
end

fill(count, bio)
stream = JetstreamBridge.config.stream_name
subject = JetstreamBridge.config.source_subject
# The reference reads the same messages through its own durable on the same filter.
reference_args = ->(round) { ["consume", Bench.server.url, stream, "reference#{round}-%{runtime}", count, 256, subject] }
thread_us = [] # CPU of the consuming Ruby thread per event (the rest is the core's runtime thread)
pairs = Bench.paired_rounds(rounds, reference_args, events: count) do |round|
  thread_cpu = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
  Bench.consume_rate("conbench", count, "bridge#{round}").tap do
    thread_us << (Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - thread_cpu) * 1e6 / count
  end
end
puts "nats-server #{Bench.server.version}, realistic ~1 KB events, batch 256, median of #{rounds} paired rounds"
puts Bench.header
puts Bench.paired_row("consume (no-op handler)", pairs, 0.70)
puts Bench.cpu_row
# For scale: a handler gets a Hash, and building one is Ruby allocation on the consuming
# thread. Ruby's own JSON.parse of one body, beside the reference's whole wall time per
# event on its faster runtime.
body = JetstreamBridge::Event.build(Bench.event(0, bio)).json
faster = Bench.faster_runtime(pairs)
reference_us = 1e6 / Bench.median(pairs.map { |_, rates| rates[faster] })
puts format("  the consuming Ruby thread: %.1f us of CPU per event; Ruby's JSON.parse of one event body: %.1f us; " \
            "the reference's wall time per event: %.1f us",
            Bench.median(thread_us), Bench.per_call_us(20_000) { JSON.parse(body) }, reference_us)

# Where an event's microseconds go: one more bridge run, its phases timed by wrappers
# around the calls the consume loop makes (the wrappers' own clock reads, ~0.1 us each,
# are in the figures). CPU of the consuming Ruby thread per phase; the core's runtime
# thread is the process's CPU less the Ruby thread's; wall time includes the waits.
module PhaseClock
  SPENT = Hash.new(0.0)

  def self.timed(phase, clock = Process::CLOCK_THREAD_CPUTIME_ID)
    started = Process.clock_gettime(clock)
    yield
  ensure
    SPENT[phase] += Process.clock_gettime(clock) - started
  end
end

JetstreamBridge::Native::Consumer.prepend(Module.new do
  def next_batch(...)
    PhaseClock.timed(:waiting, Process::CLOCK_MONOTONIC) { PhaseClock.timed(:decode) { super } }
  end

  def claim(...) = PhaseClock.timed(:claim) { super }
  def ack(...) = PhaseClock.timed(:settle) { super }
end)
JetstreamBridge::Consumer::Processor.prepend(Module.new do
  def process(...) = PhaseClock.timed(:process) { super }
end)
# Measured from the first handled event to the last, as consume_rate does.
Bench.configure(env: "conbench", app: "bench", dest: "producer", duplicate_window: "1s", batch_size: 256)
seen = 0
clocks = nil
at = -> { [Process.clock_gettime(Process::CLOCK_MONOTONIC), Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID), Bench.cpu] }
consumer = JetstreamBridge.subscribe(durable_name: "phases", batch_size: 256) do |_event, _subject, _deliveries|
  seen += 1
  if seen == 1
    PhaseClock::SPENT.clear
    clocks = at.()
  elsif seen == count
    clocks = at.().zip(clocks).map { |now, first| now - first }
    consumer.stop!
  end
end
consumer.run!
wall, ruby_thread, process_cpu = clocks
runtime_thread = process_cpu - ruby_thread
us = ->(seconds) { seconds * 1e6 / (count - 1) }
spent = PhaseClock::SPENT
handler = spent[:process] - spent[:settle] # the ack is made inside Processor#process
loop_rest = ruby_thread - spent[:decode] - spent[:claim] - spent[:process]
puts format("  per event, one timed run: Ruby thread %.1f us of CPU = decode into Hashes %.1f + claim %.1f + " \
            "handler call (Processor, no-op block) %.1f + settle (ack) %.1f + the loop (queue, units) %.1f; " \
            "core runtime thread %.1f us of CPU; wall %.1f us, of which %.1f waiting in next_batch",
            us.(ruby_thread), us.(spent[:decode]), us.(spent[:claim]), us.(handler), us.(spent[:settle]), us.(loop_rest),
            us.(runtime_thread), us.(wall), us.(spent[:waiting] - spent[:decode]))

# Memory: RSS after 100k and after 1M consumed events on one consumer.
Bench.configure(env: "conmem", app: "producer", dest: "bench", duplicate_window: "1s")
small = "y" * 100
fill(memory_count, small)
Bench.configure(env: "conmem", app: "bench", dest: "producer", duplicate_window: "1s", batch_size: 256)
seen = 0
rss = {}
consumer = JetstreamBridge.subscribe(batch_size: 256) do |_event, _subject, _deliveries|
  seen += 1
  rss[seen] = Bench.rss_kb if seen == 100_000 || seen == memory_count
  consumer.stop! if seen >= memory_count
end
GC.start
consumer.run!
growth = (rss[memory_count] - rss[100_000]) * 100.0 / rss[100_000]
puts format("memory: RSS %d KB after 100,000 events, %d KB after %d (%+.1f%%, target < +10%%)",
            rss[100_000], rss[memory_count], memory_count, growth)
