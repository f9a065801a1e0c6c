# frozen_string_literal: true

# How consuming scales with handler threads (subscribe(concurrency:)) and processes
# (PROCESSES=, here forked the same way), for a handler that waits 2 ms on IO
# (`sleep 0.002`, the GVL released as in a database or HTTP call) and one that burns
# 0.5 ms of CPU (holding the GVL). Each run: `events` events published first, then the
# consumers started on one durable; the rate is from the first to the last handled event.
#
#   ruby -Ilib bench/scaling_bench.rb [events]
#
# Targets on a 2-core machine: IO-bound at concurrency 16 >= 10x concurrency 1; CPU-bound
# at 2 processes >= 1.7x one process.
require_relative "support"

EVENTS = Integer(ARGV[0] || 3_000)

HANDLERS = {
  "io 2ms" => ->(*) { sleep 0.002 },
  "cpu 0.5ms" => lambda do |*|
    finish = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) + 0.0005
    nil while Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) < finish
  end
}.freeze

# Events per second for `processes` forked consumers with `concurrency` threads each. Each
# handled event writes one byte to a pipe; the parent times the bytes.
def consume_rate(run, handler, processes:, concurrency:)
  env = "scale#{Process.pid}#{run}"
  Bench.configure(env: env, app: "bench", dest: "producer", duplicate_window: "1s", batch_size: 64)
  events = Array.new(EVENTS) { |i| { event_type: "user.updated", resource_type: "user", payload: { id: i }, subject: JetstreamBridge.config.destination_subject } }
  events.each_slice(1_000) { |slice| JetstreamBridge.publish_batch(slice) }
  JetstreamBridge::Connection.close! # the children connect for themselves
  reader, writer = IO.pipe
  pids = Array.new(processes) do
    fork do
      reader.close
      consumer = JetstreamBridge.subscribe(durable_name: "scale", batch_size: 64, concurrency: concurrency) do |*args|
        handler.call(*args)
        writer.write("x")
      end
      consumer.run!
      exit!(0)
    end
  end
  writer.close
  reader.read(1)
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  left = EVENTS - 1
  left -= reader.read([left, 4096].min).bytesize while left.positive?
  rate = (EVENTS - 1) / (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started)
  pids.each { |pid| Process.kill("TERM", pid) }
  pids.each { |pid| Process.wait(pid) }
  rate
ensure
  reader&.close
end

puts format("%-10s %-22s %12s %10s", "handler", "shape", "events/s", "scaling")
run = 0
HANDLERS.each do |name, handler|
  base = nil
  [[1, 1], [1, 4], [1, 16], [2, 1], [4, 1], [2, 16]].each do |processes, concurrency|
    rate = consume_rate(run += 1, handler, processes: processes, concurrency: concurrency)
    base ||= rate
    puts format("%-10s %-22s %12.0f %9.2fx", name, "#{processes} process(es) x #{concurrency}", rate, rate / base)
  end
end
