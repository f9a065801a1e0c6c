# frozen_string_literal: true

# Replaying a large dead-letter queue: the time JetstreamBridge::DeadLetters.replay_all
# takes for N entries (each a stream lookup, an acked publish and a delete), and how much
# the process grows meanwhile (entries are read one at a time, never all at once).
#   ruby -Ilib bench/dead_letters_bench.rb [entries]
require_relative "support"

count = Integer(ARGV[0] || 10_000)

def rss_kb = File.read("/proc/self/status")[/VmRSS:\s+(\d+)/, 1].to_i
def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

Bench.configure(env: "dlq-bench", use_dlq: true)
config = JetstreamBridge.config
client = JetstreamBridge::Connection.client
payload = { id: 1, name: "Zoë Ångström", tags: %w[a b c], address: { city: "Malmö", zip: "211 22" }, note: "x" * 400 }
# Dead letters as the consumer stores them: the original body, the DLQ headers.
count.times do |i|
  body = JSON.generate(event_id: "ev-#{i}", schema_version: 1, event_type: "user.created", producer: "bench", payload: payload)
  headers = { "X-Dead-Letter-Reason" => "max_deliver", "X-Original-Subject" => config.destination_subject,
              "X-Error-Class" => "RuntimeError", "X-Error-Message" => "downstream timeout", "X-Deliveries" => "5",
              "X-Failed-At" => Time.now.utc.iso8601(3), "X-Original-Msg-Id" => "ev-#{i}" }
  client.publish_event(JetstreamBridge::Native::BuiltEvent.new(subject: config.dlq_subject, event_id: "dlq:bench:#{i}", json: body, headers: headers),
                       JetstreamBridge::Event.defaults(config))
end
GC.start
rss_before = rss_kb
started = monotonic
replayed = JetstreamBridge::DeadLetters.replay_all
seconds = monotonic - started
left = JetstreamBridge::DeadLetters.list(limit: 1).size
puts format("DeadLetters.replay_all: %<n>d entries in %<s>.2f s (%<rate>.0f/s, %<ms>.3f ms each), RSS %<before>d -> %<after>d KB " \
            "(+%<grew>d KB), %<left>d left in the DLQ (nats-server %<v>s)",
            n: replayed, s: seconds, rate: replayed / seconds, ms: seconds * 1000 / replayed, before: rss_before,
            after: rss_kb, grew: rss_kb - rss_before, left: left, v: Bench.server.version)
