# frozen_string_literal: true

require "json"
require "open3"

# The raw async-nats client of bench/reference (its publish-until-eof mode), the cluster
# spec's yardstick: the same publishing, through the same faults, with a 1 s ack timeout
# and failed events sent again at once. Built once per run, in the profile of the gem's
# build (bin/test's ci unless set), into its target dir: the two share the compiled
# dependencies. Its figures are seconds of failover, not speed.
#
#   running = ReferencePublisher.start(urls, subject)
#   running.stop  # => {"acked" => 1234, "longest_gap" => 4.2}
module ReferencePublisher
  ROOT = File.expand_path("../..", __dir__)
  TARGET = File.join(ROOT, "target")
  PROFILE = ENV.fetch("JETSTREAM_BRIDGE_CARGO_PROFILE", "ci")
  BINARY = File.join(TARGET, PROFILE, "jetstream_bridge_reference")

  Running = Struct.new(:stdin, :stdout, :thread) do
    # Closes its stdin (it finishes the batch in hand) and returns its figures.
    def stop
      stdin.close
      out = stdout.read
      raise "the reference publisher failed (#{thread.value}): #{out}" unless thread.value.success?

      JSON.parse(out.lines.last)
    end
  end

  def self.build!
    @build ||= begin
      out, status = Open3.capture2e("cargo", "build", "--quiet", "--profile", PROFILE, "--manifest-path",
                                    File.join(ROOT, "bench", "reference", "Cargo.toml"), "--target-dir", TARGET)
      raise "building bench/reference failed:\n#{out}" unless status.success?

      BINARY
    end
  end

  # Publishes batches of `batch` events to `subject`, `pause_ms` apart, until stopped.
  def self.start(urls, subject, batch: 10, pause_ms: 50, timeout_ms: 1000)
    stdin, stdout, thread = Open3.popen2(build!, "publish-until-eof", urls, subject, batch.to_s, pause_ms.to_s, timeout_ms.to_s)
    Running.new(stdin, stdout, thread)
  end
end
