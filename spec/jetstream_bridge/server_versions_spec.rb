# frozen_string_literal: true

require "json"

# A small publish + read-back smoke on every nats-server version the machine has
# (Debian's 2.9 and the 2.15 from bin/setup).
RSpec.describe "JetstreamBridge on each nats-server version" do
  %w[2.9 2.15].each do |prefix|
    context "nats-server #{prefix}" do
      around do |example|
        binary = NatsBinaries.find(prefix)
        skip "no nats-server #{prefix} on this machine" unless binary
        NatsServer.with_server(binary: binary) do |server|
          @server = server
          example.run
        end
      end

      it "provisions, publishes, deduplicates and reads the envelope back" do
        expect(@server.version).to start_with("#{prefix}.")
        configure_bridge(server: @server, use_dlq: true)
        report = JetstreamBridge.ensure_topology!
        expect(report).to include("action" => "created",
                                  "added" => ["#{bridge_env}.app.sync.other", "#{bridge_env}.other.sync.app",
                                              "#{bridge_env}.sync.dlq"])

        2.times do
          expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 7 }, event_id: "v-1")).to be(true)
        end
        batch = JetstreamBridge.publish_batch(Array.new(20) { |i| { event_type: "user.updated", payload: { id: i } } })
        expect(batch.published).to eq(20)

        messages = stream_messages
        expect(messages.size).to eq(21)
        subject, body, headers = messages.first
        expect(subject).to eq("#{bridge_env}.app.sync.other")
        envelope = JSON.parse(body)
        expect(envelope.keys).to eq(%w[event_id schema_version event_type producer resource_type resource_id
                                       occurred_at trace_id payload])
        expect(envelope).to include("event_id" => "v-1", "event_type" => "user.created", "resource_type" => "user",
                                    "resource_id" => "7", "payload" => { "id" => 7 })
        expect(headers["Nats-Msg-Id"]).to eq("v-1")
        expect(JetstreamBridge.health_check).to include(healthy: true)
      end
    end
  end
end
