# frozen_string_literal: true

require "json"
require_relative "../support/raw_jetstream"

# Overlap-safe stream provisioning against the shared real nats-server.
RSpec.describe "JetstreamBridge stream topology" do
  let(:stream) { "#{bridge_env}-jetstream-bridge-stream" }
  let(:pub) { "#{bridge_env}.app.sync.other" }
  let(:sub) { "#{bridge_env}.other.sync.app" }
  let(:dlq) { "#{bridge_env}.sync.dlq" }

  def stream_config(name)
    info = RawJetStream.stream_info(shared_server.url, name)
    info && info["config"]
  end

  # A client of the core that is not the bridge's connection (no auto-provisioning).
  def with_native_client
    client = JetstreamBridge::Native::Client.connect(JetstreamBridge.config.connect_options)
    yield client
  ensure
    client&.close
  end

  # Runs the block in `count` forked children that start together; returns their exit statuses.
  def in_children(count)
    rd, wr = IO.pipe
    ready_rd, ready_wr = IO.pipe
    pids = Array.new(count) do |i|
      fork do
        wr.close
        ready_rd.close
        ready_wr.write("r")
        ready_wr.close
        rd.read # released when the parent closes its end
        ok = begin
          yield i
        rescue Exception => e # rubocop:disable Lint/RescueException
          warn "child #{i}: #{e.class}: #{e.message}"
          false
        end
        Process.exit!(ok ? 0 : 1)
      end
    end
    rd.close
    ready_wr.close
    ready_rd.read(count) # every child at the gate (a child that died says so by its status)
    ready_rd.close
    wr.close
    pids.map { |pid| Process.wait2(pid)[1].exitstatus }
  end

  before { configure_bridge }

  it "creates the stream with the bridge's subjects and returns the report" do
    report = JetstreamBridge.ensure_topology!
    expect(report).to include("stream" => stream, "action" => "created", "added" => [pub, sub],
                              "covered" => [], "owned_elsewhere" => [], "retention" => "limits")
    config = stream_config(stream)
    expect(config["subjects"]).to eq([pub, sub])
    expect(config["retention"]).to eq("limits")
    expect(config["duplicate_window"]).to eq(120 * 1_000_000_000) # "2m", in nanoseconds
  end

  it "uses the configured duplicate_window" do
    configure_bridge(duplicate_window: "30s")
    JetstreamBridge.ensure_topology!
    expect(stream_config(stream)["duplicate_window"]).to eq(30 * 1_000_000_000)
  end

  it "raises a clear error for more replicas than a single server has" do
    configure_bridge(stream_replicas: 3)
    expect { JetstreamBridge.ensure_topology! }.to raise_error(JetstreamBridge::JetStreamApiError, /replicas/) { |e|
      expect(e.err_code).to eq(10_074)
    }
    expect(stream_config(stream)).to be_nil
  end

  it "adds the DLQ subject when use_dlq is on" do
    configure_bridge(use_dlq: true)
    JetstreamBridge.ensure_topology!
    expect(stream_config(stream)["subjects"]).to eq([pub, sub, dlq])
  end

  it "provisions on first use, and is unchanged when ensured again" do
    JetstreamBridge.publish(event_type: "user.created", payload: {})
    expect(JetstreamBridge::Connection.topology).to include("action" => "created")
    report = JetstreamBridge.ensure_topology!
    expect(report).to include("action" => "unchanged", "added" => [], "covered" => [pub, sub])
    expect(stream_config(stream)["subjects"]).to eq([pub, sub])
  end

  it "adds a missing subject to an existing stream of the bridge" do
    RawJetStream.create_stream(shared_server.url, stream, [pub])
    report = JetstreamBridge.ensure_topology!
    expect(report).to include("action" => "updated", "added" => [sub], "covered" => [pub])
    expect(stream_config(stream)["subjects"]).to eq([pub, sub])
  end

  it "creates nothing when auto_provision is off, and publishing then fails naming the missing stream" do
    configure_bridge(auto_provision: false, publish_attempts: 1)
    expect { JetstreamBridge.publish(event_type: "user.created", payload: {}) }
      .to raise_error(JetstreamBridge::TopologyError, /stream #{stream} does not exist and auto_provision is off/)
    expect(stream_config(stream)).to be_nil
  end

  it "with auto_provision off, ensure_topology! only checks: it names missing subjects, then passes" do
    configure_bridge(auto_provision: false) # does not connect
    RawJetStream.request(shared_server.url, "STREAM.CREATE.#{stream}", { name: stream, subjects: [pub], storage: "file" })
    expect { JetstreamBridge.ensure_topology! }
      .to raise_error(JetstreamBridge::TopologyError, /does not cover #{Regexp.escape(sub)} and auto_provision is off/)
    expect(stream_config(stream)["subjects"]).to eq([pub]) # nothing was changed

    RawJetStream.request(shared_server.url, "STREAM.UPDATE.#{stream}", { name: stream, subjects: [pub, sub], storage: "file" })
    expect(JetstreamBridge.ensure_topology!).to include("action" => "verified")
    expect(JetstreamBridge.publish(event_type: "user.created", payload: {})).to be(true)
  end

  it "provisions the stream again when it was deleted while running" do
    JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })
    reply = RawJetStream.request(shared_server.url, "STREAM.DELETE.#{stream}")
    expect(reply["success"]).to be(true)
    expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 2 })).to be(true)
    expect(stream_messages.map { |_, body, _| JSON.parse(body)["resource_id"] }).to eq(["2"])
  end

  describe "stream limits" do
    it "creates the stream with them, and the server discards the oldest past them" do
      configure_bridge(stream_max_age: "14d", stream_max_bytes: "10MB", stream_max_msgs: 5)
      JetstreamBridge.ensure_topology!
      expect(stream_config(stream)).to include("max_age" => 14 * 86_400 * 1_000_000_000, "max_bytes" => 10 * 1024**2,
                                               "max_msgs" => 5, "discard" => "old")
      ids = JetstreamBridge.publish_batch(Array.new(8) { |i| { event_type: "user.created", payload: { id: i } } }).event_ids
      expect(stream_messages.map { |_, body, _| JSON.parse(body)["event_id"] }).to eq(ids.last(5))
      health = JetstreamBridge.health_check[:stream]
      expect(health).to include(messages: 5, limits: { max_age: 14 * 86_400, max_bytes: 10 * 1024**2, max_msgs: 5 })
      expect(Time.iso8601(health[:first_message_at])).to be <= Time.iso8601(health[:last_message_at])
    end

    it "are left alone on an existing stream by the app (a warning); provision! applies them; a limit left nil keeps the stream's own value" do
      env = "t#{SecureRandom.hex(4)}"
      RawJetStream.create_stream(shared_server.url, "#{env}-jetstream-bridge-stream", ["#{env}.app.sync.other", "#{env}.other.sync.app"],
                                 max_msgs: 1000)
      configure_bridge(env: env, stream_max_age: "1d")
      report = JetstreamBridge.ensure_topology!
      expect(report).to include("action" => "unchanged", "limits_changed" => [], "limits_drift" => ["max_age: stream no limit, configured 86400s"])
      expect(stream_config(stream)).to include("max_age" => 0, "max_msgs" => 1000)
      expect(log_output).to match(/WARN.*stream #{stream} limits differ from this app's settings, left as is.*: max_age: stream no limit, configured 86400s/)

      report = JetstreamBridge.provision![:stream]
      expect(report).to include("action" => "updated", "limits_changed" => ["max_age no limit -> 86400s"], "limits_drift" => [])
      expect(report["deletes"]).to include("messages" => 0, "bytes" => 0)
      expect(stream_config(stream)).to include("max_age" => 86_400 * 1_000_000_000, "max_msgs" => 1000)
      expect(log_output).to include("stream #{stream} limits updated: max_age no limit -> 86400s")
      expect(JetstreamBridge.ensure_topology!).to include("action" => "unchanged", "limits_changed" => [], "limits_drift" => [])
    end

    it "with auto_provision off, warns about a difference the same way and changes nothing" do
      env = "t#{SecureRandom.hex(4)}"
      RawJetStream.create_stream(shared_server.url, "#{env}-jetstream-bridge-stream", ["#{env}.app.sync.other", "#{env}.other.sync.app"])
      configure_bridge(env: env, auto_provision: false, stream_max_msgs: 100)
      expect(JetstreamBridge.ensure_topology!).to include("action" => "verified", "limits_drift" => ["max_msgs: stream no limit, configured 100"])
      expect(stream_config(stream)["max_msgs"]).to eq(-1)
      expect(log_output).to include("stream #{stream} limits differ from this app's settings, left as is (only rake jetstream_bridge:provision " \
                                    "changes an existing stream's limits): max_msgs: stream no limit, configured 100")
    end

    it "refuses unusable values, naming the setting" do
      { stream_max_age: "forever", stream_max_bytes: "10 parsecs", stream_max_msgs: -1 }.each do |setting, value|
        expect { JetstreamBridge.configure { |c| c.public_send("#{setting}=", value) } }
          .to raise_error(JetstreamBridge::ConfigurationError, /#{setting}/)
      end
      expect { JetstreamBridge.configure { |c| c.stream_max_bytes = 0 } }.to raise_error(JetstreamBridge::ConfigurationError, /stream_max_bytes/)
      configure_bridge(stream_max_bytes: "1.5 GiB")
      expect(JetstreamBridge.config.stream_limits["max_bytes"]).to eq(1.5 * 1024**3)
    end
  end

  describe "subjects owned by another stream" do
    it "leaves out the subscribe subject, reports it, warns, and still publishes" do
      owner = "#{bridge_env}-team-x"
      with_native_client { |c| c.ensure_stream(stream_spec_of(owner, [sub]), :keep) }

      expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })).to be(true)
      report = JetstreamBridge::Connection.topology
      expect(report).to include("action" => "created", "added" => [pub], "owned_elsewhere" => [[sub, owner]])
      expect(stream_config(stream)["subjects"]).to eq([pub])
      expect(stream_config(owner)["subjects"]).to eq([sub])
      expect(log_output).to match(/WARN.*#{Regexp.escape(sub)}.*#{Regexp.escape(owner)}/)
      expect(stream_messages.size).to eq(1)

      again = JetstreamBridge.ensure_topology!
      expect(again).to include("action" => "unchanged", "owned_elsewhere" => [[sub, owner]])
    end

    it "recognises a wildcard owner" do
      owner = "#{bridge_env}-wide"
      with_native_client { |c| c.ensure_stream(stream_spec_of(owner, ["#{bridge_env}.other.sync.>"]), :keep) }
      report = JetstreamBridge.ensure_topology!
      expect(report["owned_elsewhere"]).to eq([[sub, owner]])
      expect(stream_config(stream)["subjects"]).to eq([pub])
    end

    it "skips the stream when every subject is owned elsewhere, without raising" do
      owner = "#{bridge_env}-all"
      with_native_client { |c| c.ensure_stream(stream_spec_of(owner, ["#{bridge_env}.*.sync.*"]), :keep) }
      report = JetstreamBridge.ensure_topology!
      expect(report).to include("action" => "skipped", "added" => [])
      expect(report["owned_elsewhere"].map(&:first)).to eq([pub, sub])
      expect(stream_config(stream)).to be_nil
      expect(JetstreamBridge.publish(event_type: "user.created", payload: {})).to be(true) # captured by the owner
    end
  end

  describe "subjects already covered by the stream's wildcards" do
    it "are not added again" do
      RawJetStream.create_stream(shared_server.url, stream, ["#{bridge_env}.*.sync.*"])
      report = JetstreamBridge.ensure_topology!
      expect(report).to include("action" => "unchanged", "added" => [], "covered" => [pub, sub])
      expect(stream_config(stream)["subjects"]).to eq(["#{bridge_env}.*.sync.*"])
    end

    it "only the uncovered DLQ subject is added" do
      configure_bridge(use_dlq: true)
      RawJetStream.create_stream(shared_server.url, stream, ["#{bridge_env}.*.sync.*"])
      report = JetstreamBridge.ensure_topology!
      expect(report).to include("action" => "updated", "added" => [dlq], "covered" => [pub, sub])
      expect(stream_config(stream)["subjects"]).to eq(["#{bridge_env}.*.sync.*", dlq])
    end
  end

  describe "an existing stream with workqueue retention (the original gem's)" do
    it "is left as is, reported and warned about, and publishing works" do
      RawJetStream.create_stream(shared_server.url, stream, [pub, sub], retention: "workqueue")
      report = JetstreamBridge.ensure_topology!
      expect(report).to include("action" => "unchanged", "retention" => "workqueue")
      expect(log_output).to match(/WARN.*workqueue/)
      expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })).to be(true)
      config = stream_config(stream)
      expect(config["retention"]).to eq("workqueue")
      expect(config["subjects"]).to eq([pub, sub])
      expect(stream_messages.size).to eq(1)
    end

    it "keeps its retention when a subject is added" do
      RawJetStream.create_stream(shared_server.url, stream, [pub], retention: "workqueue")
      report = JetstreamBridge.ensure_topology!
      expect(report).to include("action" => "updated", "added" => [sub], "retention" => "workqueue")
      expect(stream_config(stream)).to include("retention" => "workqueue", "subjects" => [pub, sub])
    end
  end

  describe "concurrent provisioning" do
    it "succeeds from several threads at once" do
      spec = stream_spec_of(stream, [pub, sub])
      clients = Array.new(8) { JetstreamBridge::Native::Client.connect(JetstreamBridge.config.connect_options) }
      begin
        reports = clients.map { |c| Thread.new { c.ensure_stream(spec, :keep) } }.map(&:value)
        expect(reports.map { |r| r["stream"] }).to all(eq(stream))
        expect(reports.count { |r| r["action"] == "created" }).to be >= 1
        expect(stream_config(stream)["subjects"]).to eq([pub, sub])
      ensure
        clients.each(&:close)
      end
    end

    it "succeeds from several processes of the same app at once" do
      env = bridge_env
      url = shared_server.url
      statuses = in_children(6) do
        JetstreamBridge.reset!
        JetstreamBridge.configure(nats_urls: url, env: env, app_name: "app", destination_app: "other",
                                  logger: Logger.new(IO::NULL))
        JetstreamBridge.ensure_topology!.is_a?(Hash)
      end
      expect(statuses).to all(eq(0))
      expect(stream_config(stream)["subjects"]).to eq([pub, sub])
    end

    it "keeps every app's subjects when several apps provision the shared stream at once" do
      env = bridge_env
      url = shared_server.url
      apps = 8
      statuses = in_children(apps) do |i|
        JetstreamBridge.reset!
        JetstreamBridge.configure(nats_urls: url, env: env, app_name: "app#{i}", destination_app: "dest#{i}",
                                  logger: Logger.new(IO::NULL))
        JetstreamBridge.ensure_topology!.is_a?(Hash) # connecting provisions, all at once
      end
      expect(statuses).to all(eq(0))
      expected = (0...apps).flat_map { |i| ["#{env}.app#{i}.sync.dest#{i}", "#{env}.dest#{i}.sync.app#{i}"] }
      subjects = stream_config(stream)["subjects"]
      expect(expected - subjects).to eq([]), "subjects lost to a concurrent update: #{(expected - subjects).inspect}"
    end
  end
end
