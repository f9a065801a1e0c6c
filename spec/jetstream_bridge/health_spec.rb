# frozen_string_literal: true

require "time"
require_relative "../support/active_record_db"

# health_check, ensure_topology! and DebugHelper.debug_info against real servers.
RSpec.describe "JetstreamBridge health" do
  let(:readme_keys) { %i[healthy nats_connected connected_at stream config version] }

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

    it "reports the connection's round trip and last error" do
      connection = JetstreamBridge.health_check[:connection]
      expect(connection[:rtt_ms]).to be_a(Float).and be_between(0, 1000)
      expect(connection[:last_error]).to be_nil
    end

    it "keeps the stream figures for a second, so frequent probes cost one STREAM.INFO" do
      expect(JetstreamBridge.health_check[:stream]).to include(messages: 0)
      JetstreamBridge.publish(event_type: "user.created", payload: {})
      expect(JetstreamBridge.health_check[:stream]).to include(messages: 0)
      sleep 1.1 # the scenario: the cached figures are a second old
      expect(JetstreamBridge.health_check[:stream]).to include(messages: 1)
    end

    context "with the outbox (SQLite)" do
      before do
        ActiveRecordDb.sqlite.activate!
        ActiveRecordDb.sqlite.truncate!
        configure_bridge(use_outbox: true)
      end

      def row(status, written_ago)
        at = Time.now - written_ago
        JetstreamBridge::OutboxEvent.create!(event_id: SecureRandom.uuid, subject: "s", payload: {}, status: status,
                                             created_at: at, updated_at: at)
      end

      it "reports the backlog, and is unhealthy past health_outbox_max_age" do
        row("pending", 600)
        row("failed", 60)
        row("publishing", 5)
        row("dead", 7200)
        row("sent", 9000)
        outbox = JetstreamBridge.health_check[:outbox]
        expect(outbox).to include(pending: 2, failed: 1, dead: 1)
        expect(outbox[:oldest_pending_age]).to be_within(5).of(600)
        expect(JetstreamBridge.health_check[:healthy]).to be(true) # the age does not count by default
        configure_bridge(use_outbox: true, health_outbox_max_age: "5m")
        expect(JetstreamBridge.health_check[:healthy]).to be(false)
        configure_bridge(use_outbox: true, health_outbox_max_age: "15m")
        expect(JetstreamBridge.health_check[:healthy]).to be(true)
      end
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

    it "a client closed by reset! says it is not connected, and a new one connects" do
      closed = JetstreamBridge::Connection.client
      expect(closed.connected?).to be(true)
      JetstreamBridge.reset!
      expect(closed.connected?).to be(false)
      configure_bridge
      expect(JetstreamBridge::Connection.client.connected?).to be(true)
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
      # The stream figures may come from the second-long cache: the outage shows once the
      # client has noticed it.
      took = elapsed { health = eventually(timeout: 5, interval: 0.1) { (h = JetstreamBridge.health_check)[:healthy] ? nil : h } }
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
