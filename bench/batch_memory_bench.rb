# frozen_string_literal: true

# Memory of one large publish_batch, as the process sees it: resident memory added at the
# call's peak, per event, beyond the input Array the app built; and resident memory
# after the call (GC run), i.e. what the batch leaves behind. Events of ~290 bytes with a
# nested, non-ASCII payload. Target: under 512 bytes per event at the peak.
#   ruby -Ilib bench/batch_memory_bench.rb [events]
require_relative "support"

count = Integer(ARGV[0] || 200_000)

def status_mb(field) = File.read("/proc/self/status")[/#{field}:\s+(\d+)/, 1].to_i / 1024.0

Bench.configure(env: "membench")
JetstreamBridge.publish(event_type: "warm.up", payload: { id: 0 })

events = Array.new(count) do |i|
  { event_type: "user.created",
    payload: { id: i, name: "Zoë user #{i}", email: "u#{i}@example.com", tags: %w[a b], address: { city: "Köln" } } }
end
GC.start
before_peak = status_mb("VmHWM")
before_rss = status_mb("VmRSS")
started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
result = JetstreamBridge.publish_batch(events)
seconds = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
raise "failed: #{result.failed.first(3).inspect}" unless result.success?

events = nil
result = nil
GC.start
peak = status_mb("VmHWM")
after = status_mb("VmRSS")
puts format("publish_batch of %<n>d events in %<s>.2fs: peak +%<peak>.0f MB (%<per>.0f bytes/event beyond the input); " \
            "resident after the call +%<after>.0f MB",
            n: count, s: seconds, peak: peak - before_peak, per: (peak - before_peak) * 1024 * 1024 / count,
            after: after - before_rss)
