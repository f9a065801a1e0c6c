# frozen_string_literal: true

# How long a consumer's run! takes to return after stop!, as a graceful shutdown feels
# it: idle (a pull request waiting on the server), with a full batch prefetched behind a
# handler that has just returned, stop! called from inside the handler, and stop! while
# NATS is unreachable (the connection cut by a proxy). Target: under 100 ms when no
# handler is running.
#   ruby -Ilib bench/stop_bench.rb [rounds]
require_relative "support"
require_relative "../spec/support/tcp_proxy"

rounds = Integer(ARGV[0] || 10)

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

# A fresh stream for each round: nothing left over from the one before.
def fresh(name, round)
  Bench.configure(env: "stop-#{name}-#{round}", app: "bench", dest: "producer")
  JetstreamBridge.config.destination_subject
end

# Runs a consumer, lets `setup` prepare the moment, stops it; returns milliseconds.
def stop_time(consumer, stop_from_inside: false)
  thread = Thread.new { consumer.run! }
  sleep 1.2 # connected, a pull request waiting on the server (expires after 1 s: renewed)
  started = stop_from_inside ? yield : (yield; monotonic)
  consumer.stop! unless stop_from_inside
  thread.join
  (monotonic - started) * 1000
end

def publish(subject, count)
  JetstreamBridge.publish_batch(Array.new(count) { |i| { event_type: "bench.created", subject: subject, payload: { id: i } } })
end

idle = Array.new(rounds) do |round|
  fresh("idle", round)
  stop_time(JetstreamBridge.subscribe { |*| nil }) { nil }
end

prefetched = Array.new(rounds) do |round|
  subject = fresh("prefetched", round)
  entered = Queue.new
  release = Queue.new
  consumer = JetstreamBridge.subscribe(batch_size: 25) { |*| entered << true; release.pop }
  stop_time(consumer) do
    publish(subject, 50)
    entered.pop # one handler running, the rest of its batch and the next one prefetched
    consumer.stop!
    release.close # the handler returns now
  end
end

inside = Array.new(rounds) do |round|
  subject = fresh("inside", round)
  stopped_at = Queue.new
  consumer = nil
  consumer = JetstreamBridge.subscribe { |*| consumer.stop!; stopped_at << monotonic }
  stop_time(consumer, stop_from_inside: true) do
    publish(subject, 5)
    stopped_at.pop
  end
end

unreachable = Array.new(rounds) do |round|
  proxy = TcpProxy.new(Bench.server.port)
  Bench.configure(env: "stop-unreachable-#{round}", app: "bench", dest: "producer", nats_urls: proxy.url)
  stop_time(JetstreamBridge.subscribe { |*| nil }) do
    proxy.close
    sleep 0.05 while JetstreamBridge.connected?
    sleep 0.5 # binding the durable again, with no server to answer
  end
ensure
  proxy&.close
end

[["idle", idle], ["handler returning, 49 prefetched", prefetched], ["stop! inside the handler", inside],
 ["NATS unreachable", unreachable]].each do |name, times|
  sorted = times.sort
  puts format("%-58<name>s median %<median>6.1f ms   max %<max>6.1f ms   (%<n>d rounds, nats-server %<v>s)",
              name: "stop! -> run! returns, #{name}:", median: sorted[sorted.size / 2], max: sorted.last,
              n: sorted.size, v: Bench.server.version)
end
