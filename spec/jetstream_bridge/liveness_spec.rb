# frozen_string_literal: true

require "tmpdir"

# The HEALTH_FILE of `rake jetstream_bridge:consume` and `outbox:relay`, read by
# `rake jetstream_bridge:alive` (the rake tasks themselves run in rails_integration_spec).
RSpec.describe JetstreamBridge::Liveness do
  it "touches the file while healthy, not while unhealthy, and alive? tells by its age" do
    Dir.mktmpdir do |dir|
      path = File.join(dir, "probe", "alive")
      healthy = true
      liveness = described_class.start(path, interval: 0.1) { healthy }
      eventually { described_class.alive?(path, 1) }
      healthy = false
      sleep 0.2 # a touch in progress ends
      touched = File.mtime(path)
      sleep 0.5
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
      liveness = described_class.start(path, interval: 0.05) { raise "no connection" }
      sleep 0.3
      liveness.stop
      expect(File.exist?(path)).to be(false)
    end
    expect { described_class.start(" ") { true } }.to raise_error(ArgumentError, /HEALTH_FILE/)
  end
end
