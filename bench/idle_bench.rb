# frozen_string_literal: true

# What an idle process costs: voluntary context switches per second of all its threads
# (each one a wake-up), with a consumer waiting for messages that never come, and with
# only a connection (after one publish). Target: a few per second.
#   ruby -Ilib bench/idle_bench.rb [seconds]
require_relative "support"

seconds = Float(ARGV[0] || 10)

# Context switches so far, per thread id (threads that end between two readings are
# left out of the difference).
def switches
  Dir["/proc/self/task/*/status"].to_h do |file|
    [File.basename(File.dirname(file)), File.read(file)[/voluntary_ctxt_switches:\s+(\d+)/, 1].to_i]
  rescue Errno::ENOENT
    [nil, 0]
  end
end

def per_second(seconds)
  before = switches
  sleep seconds
  after = switches
  (after.sum { |tid, n| before.key?(tid) ? n - before[tid] : 0 } / seconds).round(1)
end

Bench.configure(env: "idlebench", app: "bench", dest: "producer")
consumer = JetstreamBridge.subscribe { |*| nil }
thread = Thread.new { consumer.run! }
sleep 3 # connected, provisioned, settled into waiting
consuming = per_second(seconds)
consumer.stop!
thread.join
JetstreamBridge.publish(event_type: "idle.check")
sleep 3
connected = per_second(seconds)
puts format("idle consumer:            %<n>5.1f wake-ups/s (voluntary context switches, all threads, over %<s>.0fs)",
            n: consuming, s: seconds)
puts format("idle connection only:     %<n>5.1f wake-ups/s", n: connected)
