# frozen_string_literal: true

require "tmpdir"

# The HEALTH_FILE of `rake jetstream_bridge:consume` and `outbox:relay`, read by
# `rake jetstream_bridge:alive` (the rake tasks themselves run in rails_integration_spec).
RSpec.describe JetstreamBridge::Liveness do
  it "touches the file while healthy, not while unhealthy, and alive? tells by its age" do
    Dir.mktmpdir do |dir|
      path = File.join(dir, "probe", "alive")
      healthy = true
      checks = 0
      liveness = described_class.start(path, interval: 0.1) { checks += 1; healthy }
      eventually { described_class.alive?(path, 1) }
      healthy = false
      seen = checks
      eventually { checks >= seen + 2 } # a check that saw true, and its touch, are over
      touched = File.mtime(path)
      seen = checks
      eventually { checks >= seen + 5 } # five checks (0.5 s) that saw false
      expect(File.mtime(path)).to eq(touched)
      expect(described_class.alive?(path, 0.3)).to be(false)
      healthy = true
      eventually { described_class.alive?(path, 0.3) }
      liveness.stop
      expect(described_class.alive?(File.join(dir, "missing"), 30)).to be(false)
    end
  end

  it "counts a health check that raises as unhealthy, and refuses an empty path" do
    Dir.mktmpdir do |dir|
      path = File.join(dir, "alive")
      checks = 0
      liveness = described_class.start(path, interval: 0.05) { checks += 1; raise "no connection" }
      eventually { checks >= 5 }
      liveness.stop
      expect(File.exist?(path)).to be(false)
    end
    expect { described_class.start(" ") { true } }.to raise_error(ArgumentError, /HEALTH_FILE/)
  end
end
