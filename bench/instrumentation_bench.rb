# frozen_string_literal: true

# What instrumentation costs a publish, against a real local nats-server:
# - the check every publish makes when nothing subscribes (Instrumentation.listening?,
#   with ActiveSupport::Notifications loaded, as under Rails), in nanoseconds;
# - whole publishes (realistic payload) with no subscriber, with an ActiveSupport
#   subscriber and with a built-in hook subscriber, in microseconds per call; paired
#   rounds, the order alternating.
#
#   ruby -Ilib bench/instrumentation_bench.rb [publishes per round] [rounds]
require "active_support"
require "active_support/notifications"
require_relative "support"

PUBLISHES = Integer(ARGV[0] || 5_000)
ROUNDS = Integer(ARGV[1] || 5)
CHECKS = 2_000_000

PAYLOAD = { id: 1, email: "someone@example.com", name: "Zoë \"Ada\" O'Brien", bio: "x" * 700, age: 37, score: 4.75,
            active: true, deleted_at: nil, address: { city: "Kraków", zip: "30-001" }, tags: %w[a b c] }.freeze

def ns_per_check
  name = JetstreamBridge::Publisher::PUBLISH_EVENT
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
  i = 0
  while i < CHECKS
    JetstreamBridge::Instrumentation.listening?(name)
    i += 1
  end
  (Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) - started) / CHECKS.to_f
end

def us_per_publish
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  PUBLISHES.times { |i| JetstreamBridge.publish(event_type: "user.updated", payload: PAYLOAD.merge(id: i)) }
  (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1e6 / PUBLISHES
end

Bench.configure(env: "instr#{Process.pid}", duplicate_window: "1s")
us_per_publish # warm up: connection, stream, JIT-free steady state

variants = {
  "no subscriber" => -> { nil },
  "ActiveSupport subscriber" => -> { ActiveSupport::Notifications.subscribe("publish.jetstream_bridge") { |_event| nil } },
  "JetstreamBridge.instrumenter subscriber" => -> { JetstreamBridge.instrumenter.subscribe("publish.jetstream_bridge") { |*| nil } }
}
results = Hash.new { |h, k| h[k] = [] }
ROUNDS.times do |round|
  order = round.even? ? variants.keys : variants.keys.reverse
  order.each do |name|
    subscription = variants[name].call
    results[name] << us_per_publish
  ensure
    ActiveSupport::Notifications.unsubscribe(subscription) if subscription.is_a?(ActiveSupport::Notifications::Fanout::Subscribers::Evented)
    JetstreamBridge.instrumenter.unsubscribe(subscription) if subscription.is_a?(JetstreamBridge::Instrumenter::Subscription)
  end
end

check = Bench.median(Array.new(5) { ns_per_check })
puts format("listening? with no subscriber: %.0f ns per publish (target < 1000 ns)", check)
base = Bench.median(results["no subscriber"])
results.each do |name, values|
  puts format("%-42s %8.1f us/publish (median of %d rounds of %d; %+.1f us against no subscriber)",
              name, Bench.median(values), ROUNDS, PUBLISHES, Bench.median(values) - base)
end
