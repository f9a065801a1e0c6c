# frozen_string_literal: true

require_relative "../support/consumer_helpers"
require_relative "../support/raw_jetstream"

# Moving an app from subject_layout :env to :app without losing events, as the README's
# Subject layouts part says: the :app consumer reads the new subject while a process still
# configured with :env drains the old durable. (One process plays both, configured in turn.)
RSpec.describe "Moving from subject_layout :env to :app" do
  include ConsumerHelpers
  include_context "with its own nats-server"

  let(:env) { "production" }

  def configure_as(layout, **settings)
    configure_bridge(server: @server, env: env, subject_layout: layout, use_dlq: true, **settings)
  end

  # Events the counterpart publishes onto the subject this app consumes, under `layout`.
  def counterpart_publishes(layout, count, **settings)
    configure_as(layout, **settings)
    publish_incoming(count)
  end

  # Runs this app's consumer under `layout` until it has handled `count` events.
  def consume(layout, count, **settings)
    configure_as(layout, **settings)
    consumer, calls = run_recording_consumer
    eventually { calls.size >= count }
    eventually { consumer_info["num_ack_pending"].zero? && consumer_info["num_pending"].zero? }
    stop_consumer(consumer, running_consumers.last.last)
    calls
  end

  after { stop_consumers }

  it "loses no event: the :app consumer reads the new subject, an :env one drains the old durable" do
    before_switch = counterpart_publishes(:env, 3) # stored, and left unconsumed at the switch
    after_switch = counterpart_publishes(:app, 2)
    expect(consume(:app, 2).ids).to eq(after_switch)
    expect(consume(:env, 3).ids).to eq(before_switch)
    expect(NatsApi.consumer_info(@server.url, "#{env}-jetstream-bridge-stream", "#{env}-app-workers")["num_pending"]).to eq(0)
    expect(NatsApi.consumer_info(@server.url, "jetstream-bridge-stream", "app-workers")["num_pending"]).to eq(0)
  end

  it "can keep one stream for both subject sets (stream_name), which keeps its retention" do
    old_stream = "#{env}-jetstream-bridge-stream"
    before_switch = counterpart_publishes(:env, 2)
    after_switch = counterpart_publishes(:app, 2, stream_name: old_stream)
    expect(RawJetStream.stream_info(@server.url, old_stream)["config"]).to include(
      "retention" => "limits",
      "subjects" => ["#{env}.app.sync.other", "#{env}.other.sync.app", "#{env}.sync.dlq", "app.sync.other", "other.sync.app", "app.sync.dlq"]
    )
    expect(log_output).to include("has limits retention (not changed)", "adds no subject to a stream without workqueue retention")
    expect(consume(:app, 2, stream_name: old_stream).ids).to eq(after_switch)
    expect(consume(:env, 2).ids).to eq(before_switch)
    expect(RawJetStream.stream_info(@server.url, "jetstream-bridge-stream")).to be_nil
  end
end
