# frozen_string_literal: true

require "time"

# health_check, ensure_topology! and DebugHelper.debug_info against real servers.
RSpec.describe "JetstreamBridge health" do
  let(:readme_keys) { %i[healthy nats_connected connected_at stream config version] }

  def elapsed
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    yield
    Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  end

  context "with a running server" do
    before { configure_bridge }

    it "returns the README's hash, healthy" do
      health = JetstreamBridge.health_check
      expect(health.keys).to include(*readme_keys)
      expect(health[:healthy]).to be(true)
      expect(health[:nats_connected]).to be(true)
      expect(Time.iso8601(health[:connected_at])).to be_within(30).of(Time.now)
      expect(health[:stream]).to include(exists: true, name: "#{bridge_env}-jetstream-bridge-stream")
      expect(health[:config]).to include(env: bridge_env, app_name: "app", destination_app: "other")
      expect(health[:version]).to eq(JetstreamBridge::VERSION)
    end

    it "counts the stream's messages" do
      2.times { JetstreamBridge.publish(event_type: "user.created", payload: {}) }
      expect(JetstreamBridge.health_check[:stream]).to include(exists: true, messages: 2)
    end

    it "is not healthy when the stream is missing" do
      configure_bridge(auto_provision: false)
      health = JetstreamBridge.health_check
      expect(health[:nats_connected]).to be(true)
      expect(health[:stream][:exists]).to be(false)
      expect(health[:healthy]).to be(false)
    end

    it "ensure_topology! returns the provisioning report" do
      report = JetstreamBridge.ensure_topology!
      expect(report).to be_a(Hash)
      expect(report.keys).to include("stream", "action", "added", "covered", "owned_elsewhere", "retention")
      expect(report["stream"]).to eq("#{bridge_env}-jetstream-bridge-stream")
      expect(JetstreamBridge.connected?).to be(true)
    end

    it "DebugHelper.debug_info returns a Hash" do
      JetstreamBridge.publish(event_type: "user.created", payload: {})
      info = JetstreamBridge::DebugHelper.debug_info
      expect(info).to be_a(Hash)
      expect(info).to include(version: JetstreamBridge::VERSION, config_errors: [])
      expect(info[:health]).to include(healthy: true)
      expect(info[:names]).to include("stream" => "#{bridge_env}-jetstream-bridge-stream")
      expect(info[:server]).to include("jetstream" => true)
    end
  end

  context "when the server cannot be reached" do
    it "health_check returns healthy false without raising, quickly" do
      dead = NatsServer.free_ports(1, exclude: [shared_server.port]).first
      configure_bridge(server: "nats://127.0.0.1:#{dead}", connect_timeout: "1s", request_timeout: "1s")
      health = nil
      took = elapsed { health = JetstreamBridge.health_check }
      expect(health.keys).to include(*readme_keys)
      expect(health).to include(healthy: false, nats_connected: false)
      expect(health[:stream][:exists]).to be(false)
      expect(took).to be < 5
      expect(JetstreamBridge::DebugHelper.debug_info).to be_a(Hash)
    end

    it "health_check does not raise for an invalid configuration" do
      configure_bridge
      JetstreamBridge.config.app_name = nil
      health = JetstreamBridge.health_check
      expect(health[:healthy]).to be(false)
      expect(JetstreamBridge::DebugHelper.debug_info[:config_errors].join).to include("app_name")
    end
  end

  context "with a server that stops" do
    around do |example|
      NatsServer.with_server do |server|
        @server = server
        example.run
      end
    end

    it "reports healthy false without raising, then healthy again after a restart" do
      configure_bridge(server: @server, request_timeout: "1s", connect_timeout: "1s")
      expect(JetstreamBridge.health_check[:healthy]).to be(true)
      expect(JetstreamBridge.connected?).to be(true)

      @server.stop
      health = nil
      took = elapsed { health = JetstreamBridge.health_check }
      expect(health).to include(healthy: false, nats_connected: false)
      expect(health.keys).to include(*readme_keys)
      expect(took).to be < 5
      expect(JetstreamBridge.connected?).to be(false)
      expect(JetstreamBridge::DebugHelper.debug_info).to be_a(Hash)

      @server.start
      eventually(timeout: 15) { JetstreamBridge.connected? }
      expect(JetstreamBridge.health_check[:healthy]).to be(true)
    end
  end
end
