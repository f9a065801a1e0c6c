# frozen_string_literal: true

require "securerandom"
require_relative "../support/consumer_helpers"
require_relative "../support/least_privilege"

# The bridge on an account restricted to exactly the permissions the README lists for
# `auto_provision = false, verify_topology = false` (an admin account provisions first,
# as `rake jetstream_bridge:provision` does): publish, consume, dead-letter and
# health_check work, and the server logs no permission violation.
RSpec.describe "Least privilege (verify_topology: false)" do
  include ConsumerHelpers

  env, names, stream, durable = LeastPrivilege.app_names("lp")
  # The README's permission table for this mode.
  app_publish = [names["publish_subject"], names["dlq_subject"], "$JS.API.CONSUMER.MSG.NEXT.#{stream}.#{durable}",
                 "$JS.ACK.#{stream}.#{durable}.>"]
  app_subscribe = ["_INBOX.>", "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.#{stream}",
                   "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.#{stream}.#{durable}"]
  LeastPrivilege.serve(self, "app" => { publish: app_publish, subscribe: app_subscribe })

  it "publishes, consumes, dead-letters and checks health with no stream or consumer API call" do
    settings = { env: env, use_dlq: true, max_deliver: 2, backoff: %w[50ms] }
    configure_bridge(server: url_for("admin"), **settings)
    provisioned = JetstreamBridge.provision!
    expect(provisioned[:stream]).to include("stream" => stream, "action" => "unchanged") # created on connecting
    expect(provisioned[:consumer].first).to eq("created")

    configure_bridge(server: url_for("app"), auto_provision: false, verify_topology: false, **settings)
    expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })).to be(true)
    expect(JetstreamBridge.ensure_topology!).to include("action" => "not verified (verify_topology is off)")
    # The other app publishes to this one: a good event and one its handler refuses.
    %w[good refused].each do |id|
      NatsApi.publish_with_headers(url_for("admin"), names["subscribe_subject"], envelope(id), { "Nats-Msg-Id" => id })
    end
    _, calls = run_recording_consumer { |call| raise ArgumentError, "refused" if call.id == "refused" }
    eventually(timeout: 15) { calls.ids.sort == %w[good refused] }
    dlq = eventually(timeout: 15) do
      found = NatsApi.get_message(url_for("admin"), stream, 4) # 1 published, 2 incoming, then the dead letter
      found if found && found[0] == names["dlq_subject"]
    end
    expect(JSON.parse(dlq[1])["event_id"]).to eq("refused")
    health = JetstreamBridge.health_check
    expect(health).to include(healthy: true, nats_connected: true)
    expect(health[:stream]).to include(exists: nil, name: stream, verified: false)
    stop_consumers

    violations = File.readlines(@server.log).grep(/violation/i)
    expect(violations).to be_empty
    expect(consumer_errors).to be_empty
  end

  it "refuses a verify_topology that is not true or false (nil would mean verified in one place, not in another)" do
    expect { JetstreamBridge.configure(verify_topology: nil) }
      .to raise_error(JetstreamBridge::ConfigurationError, /verify_topology must be true or false, got nil/)
  end

  it "refuses verify_topology: false with auto_provision on, naming the rake task" do
    expect { JetstreamBridge.configure(verify_topology: false) }
      .to raise_error(JetstreamBridge::ConfigurationError, /verify_topology false needs auto_provision false.*rake jetstream_bridge:provision/)
  end
end
