# frozen_string_literal: true

require "json"
require_relative "../support/child_ruby"
require_relative "../support/raw_jetstream"

# Stream limits are the operator's decision: an app process never changes the limits of
# an existing (shared) stream, whatever its config says; `rake jetstream_bridge:provision`
# applies them, refusing without CONFIRM=1 a change that would delete stored messages.
RSpec.describe "Stream limits of an existing stream" do
  let(:root) { File.expand_path("../..", __dir__) }
  let(:stored) { 300 } # events billing has published that nobody consumed
  let(:stream) { "#{bridge_env}-jetstream-bridge-stream" }

  def info = RawJetStream.stream_info(shared_server.url, stream)

  # As app `app_name` (billing's partner is api and back), with `settings`.
  def as_app(app_name, **settings)
    configure_bridge(env: bridge_env, app_name: app_name, destination_app: app_name == "billing" ? "api" : "billing", **settings)
  end

  # `rake jetstream_bridge:provision` as the api app, in a process of its own: [output, status].
  def provision(**env)
    env = { "NATS_URL" => shared_server.url, "JSB_ENV" => bridge_env, "APP_NAME" => "api", "DESTINATION_APP" => "billing" }
          .merge(env.transform_keys(&:to_s).transform_values(&:to_s))
    rakefile = File.join(root, "spec/fixtures/rake_app/Rakefile")
    ChildRuby.capture("-S", "rake", "-f", rakefile, "jetstream_bridge:provision", env: env, chdir: root)
  end

  # billing stores `stored` events nobody has consumed yet.
  before do
    configure_bridge(app_name: "billing", destination_app: "api", duplicate_window: "1s") # max_age may not be under it
    result = JetstreamBridge.publish_batch(Array.new(stored) { |i| { event_type: "invoice.created", payload: { id: i, pad: "x" * 100 } } })
    expect(result.failed).to be_empty
  end

  it "is left alone by an app configured with smaller limits: nothing deleted, a warning, the drift in health_check" do
    as_app("api", stream_max_msgs: 10, stream_max_bytes: 4096, stream_max_age: "1s")
    expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })).to be(true)

    expect(info["state"]["messages"]).to eq(stored + 1)
    expect(info["config"]).to include("max_msgs" => -1, "max_bytes" => -1, "max_age" => 0)
    drift = ["max_age: stream no limit, configured 1s", "max_bytes: stream no limit, configured 4096",
             "max_msgs: stream no limit, configured 10"]
    expect(log_output).to match(/WARN.*stream #{stream} limits differ from this app's settings, left as is.*#{Regexp.escape(drift.join('; '))}/)
    expect(log_output).not_to include("limits updated")
    expect(JetstreamBridge.ensure_topology!).to include("action" => "unchanged", "limits_drift" => drift)
    expect(JetstreamBridge.health_check[:stream]).to include(messages: stored + 1, limits_drift: drift)
  end

  it "is left alone by an app configured with larger limits too, and two apps booting in turn never flip it" do
    RawJetStream.request(shared_server.url, "STREAM.UPDATE.#{stream}", info["config"].merge("max_msgs" => 1000))
    3.times do
      as_app("api", stream_max_msgs: 10)
      JetstreamBridge.publish(event_type: "user.created", payload: {})
      expect(info["config"]["max_msgs"]).to eq(1000)
      as_app("billing", stream_max_msgs: 100_000)
      JetstreamBridge.publish(event_type: "invoice.created", payload: {})
      expect(info["config"]["max_msgs"]).to eq(1000)
      expect(JetstreamBridge.health_check[:stream][:limits_drift]).to eq(["max_msgs: stream 1000, configured 100000"])
    end
    expect(info["state"]["messages"]).to eq(stored + 6)
  end

  it "rake jetstream_bridge:provision prints what smaller limits would delete and exits 1; with CONFIRM=1 it applies them" do
    bytes = info["state"]["bytes"]
    out, status = provision(STREAM_MAX_MSGS: 10, STREAM_MAX_BYTES: bytes / 2)
    expect(status.exitstatus).to eq(1), out
    expect(out).to include("would delete about #{stored - 10} of #{stored} stored messages")
    expect(out).to include("max_msgs no limit -> 10: #{stored - 10} messages")
    expect(out).to match(/max_bytes no limit -> #{bytes / 2}: #{bytes - bytes / 2} bytes over, about \d+ messages/)
    expect(out).to include("Nothing was changed").and include("CONFIRM=1")
    expect(info["state"]["messages"]).to eq(stored)
    expect(info["config"]).to include("max_msgs" => -1, "max_bytes" => -1)

    out, status = provision(STREAM_MAX_MSGS: 10, STREAM_MAX_BYTES: bytes / 2, CONFIRM: 1)
    expect(status.exitstatus).to eq(0), out
    expect(out).to include("limits changed: max_bytes no limit -> #{bytes / 2}, max_msgs no limit -> 10")
    expect(out).to include("deleted about #{stored - 10} stored messages")
    expect(info["state"]["messages"]).to eq(10)
    expect(info["config"]).to include("max_msgs" => 10, "max_bytes" => bytes / 2)
  end

  it "rake jetstream_bridge:provision counts the messages older than a new max_age, and applies limits that delete nothing" do
    sleep 4 # the stored events are older than 3s, the next ones younger (the rake process starts in well under 2s)
    JetstreamBridge.publish_batch(Array.new(5) { |i| { event_type: "invoice.created", payload: { id: i } } })
    out, status = provision(STREAM_MAX_AGE: "3s", STREAM_MAX_MSGS: 1000)
    expect(status.exitstatus).to eq(1), out
    expect(out).to include("max_age no limit -> 3s: #{stored} messages")
    expect(info["state"]["messages"]).to eq(stored + 5)

    out, status = provision(STREAM_MAX_MSGS: 1000)
    expect(status.exitstatus).to eq(0), out
    expect(out).to include("limits changed: max_msgs no limit -> 1000")
    expect(info["config"]["max_msgs"]).to eq(1000)
    expect(info["state"]["messages"]).to eq(stored + 5)
  end
end
