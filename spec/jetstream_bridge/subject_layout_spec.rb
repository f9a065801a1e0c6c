# frozen_string_literal: true

require "json"
require "time"
require_relative "../support/consumer_helpers"
require_relative "../support/pure_ruby_gem"

# subject_layout :app against a real nats-server, beside an app on the pure-Ruby gem 7.1
# whose requests spec/support/pure_ruby_gem.rb sends as that gem does: one stream shared
# both ways, whichever app provisions it first, and events crossing both ways.
# (pure_ruby_gem_spec.rb runs the gem itself, when its source is given.)
RSpec.describe "subject_layout :app beside the pure-Ruby gem 7.1" do
  include ConsumerHelpers
  include_context "with its own nats-server" # "jetstream-bridge-stream" is one per server

  let(:url) { @server.url }
  # The other app: billing, on the pure-Ruby gem, exchanging events with this app (api).
  let(:billing) { PureRubyGem::App.new(url, app_name: "billing", destination_app: "api") }

  def configure_api(**settings)
    configure_bridge(server: @server, subject_layout: :app, app_name: "api", destination_app: "billing",
                     use_dlq: true, **settings)
  end

  def stream_config = RawJetStream.stream_info(url, "jetstream-bridge-stream")["config"]

  after { stop_consumers }

  it "creates the stream as the pure-Ruby gem does (workqueue, file storage), with no env in any name" do
    configure_api(env: nil)
    report = JetstreamBridge.ensure_topology!
    expect(report).to include("stream" => "jetstream-bridge-stream", "action" => "created", "retention" => "workqueue",
                              "added" => ["api.sync.billing", "billing.sync.api", "api.sync.dlq"])
    expect(stream_config).to include("retention" => "workqueue", "storage" => "file",
                                     "subjects" => ["api.sync.billing", "billing.sync.api", "api.sync.dlq"])
    expect(log_output).not_to include("stream_retention", "retention (not changed)")
  end

  it "shares a stream the pure-Ruby gem created first: adds only its own DLQ subject, keeps the other's durable" do
    expect(billing.provision!).to eq(:created)
    configure_api
    report = JetstreamBridge.ensure_topology!
    expect(report).to include("action" => "updated", "added" => ["api.sync.dlq"],
                              "covered" => ["api.sync.billing", "billing.sync.api"], "retention" => "workqueue")
    expect(stream_config["subjects"]).to eq(["billing.sync.api", "api.sync.billing", "billing.sync.dlq", "api.sync.dlq"])
    expect(log_output).not_to include("retention (not changed)")
    expect(NatsApi.consumer_info(url, "jetstream-bridge-stream", "billing-workers")["config"]["filter_subject"]).to eq("api.sync.billing")
  end

  it "creates a stream the pure-Ruby gem provisioning after it extends with its own DLQ subject" do
    configure_api
    JetstreamBridge.ensure_topology!
    expect(billing.provision!).to eq(:updated) # on a limits stream it would be :retention_mismatch, its DLQ left out
    expect(stream_config).to include("retention" => "workqueue",
                                     "subjects" => ["api.sync.billing", "billing.sync.api", "api.sync.dlq", "billing.sync.dlq"])
    expect(JetstreamBridge.ensure_topology!).to include("action" => "unchanged")
  end

  it "publishes an event the pure-Ruby app's durable reads, with every envelope field it reads" do
    billing.provision!
    configure_api
    JetstreamBridge.publish(resource_type: "user", event_type: "created", payload: { id: 7, email: "ada@example.com" },
                            event_id: "evt-1", trace_id: "trace-1")
    got = billing.fetch_and_ack(5)
    expect(got.map(&:first)).to eq(["api.sync.billing"])
    envelope = got.first.last
    expect(envelope).to include("event_id" => "evt-1", "schema_version" => 1, "event_type" => "created", "producer" => "api",
                                "resource_type" => "user", "resource_id" => "7", "trace_id" => "trace-1",
                                "payload" => { "id" => 7, "email" => "ada@example.com" })
    expect(Time.iso8601(envelope["occurred_at"])).to be_within(60).of(Time.now)
  end

  it "consumes an event published as the pure-Ruby gem publishes it (its envelope, lower-case nats-msg-id)" do
    billing.provision!
    configure_api
    sent = billing.publish(payload: { id: 9, email: "bob@example.com" })
    _, calls = run_recording_consumer
    eventually { calls.size == 1 }
    call = calls.to_a.first
    expect(call.subject).to eq("billing.sync.api")
    expect(call.event).to eq(JSON.parse(JSON.generate(sent)))
    eventually { consumer_info("api-workers")["num_ack_pending"].zero? }
    expect(RawJetStream.stream_info(url, "jetstream-bridge-stream")["state"]["messages"]).to eq(0) # workqueue: acked is gone
  end

  it "takes over the durable an app on the pure-Ruby gem left (same app_name), losing none of its events" do
    api_on_pure_ruby = PureRubyGem::App.new(url, app_name: "api", destination_app: "billing")
    api_on_pure_ruby.provision!
    sent = billing.publish(payload: { id: 1 })
    configure_api
    _, calls = run_recording_consumer
    eventually { calls.size == 1 }
    expect(calls.ids).to eq([sent["event_id"]])
    config = consumer_info("api-workers")["config"]
    expect(config).to include("filter_subject" => "billing.sync.api", "ack_wait" => 30 * 1_000_000_000)
    expect(config["backoff"]).to be_nil # the gem's backoff (seconds read as nanoseconds) is removed
  end

  it "recreates its durable deleted while consuming, from the first unacked event (workqueue: deliver all)" do
    billing.provision!
    configure_api(ack_wait: "5s")
    first = billing.publish(payload: { id: 1 })["event_id"]
    consumer, calls = run_recording_consumer
    eventually { calls.for(first).any? }
    eventually { consumer_info("api-workers")["num_ack_pending"].zero? }

    NatsApi.delete_consumer(url, "jetstream-bridge-stream", "api-workers")
    later = Array.new(3) { |i| billing.publish(payload: { id: i + 2 })["event_id"] }
    eventually(timeout: 20) { later.all? { |id| calls.for(id).any? } }
    expect(consumer_info("api-workers")["config"]["deliver_policy"]).to eq("all")
    expect(consumer).not_to be_stopped
    expect(calls.ids).to eq([first] + later)
  end

  it "dead-letters onto its own DLQ subject in the shared stream" do
    billing.provision!
    configure_api(max_deliver: 1)
    billing.publish(payload: { id: 3 })
    _, calls = run_recording_consumer { raise "boom" }
    eventually { calls.size == 1 }
    eventually { JetstreamBridge::DeadLetters.list.size == 1 }
    expect(JetstreamBridge::DeadLetters.list.first.original_subject).to eq("billing.sync.api")
    expect(stream_messages.map(&:first)).to eq(["api.sync.dlq"])
  end
end
