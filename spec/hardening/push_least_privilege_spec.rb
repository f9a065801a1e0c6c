# frozen_string_literal: true

require "securerandom"
require "timeout"
require_relative "../support/consumer_helpers"
require_relative "../support/least_privilege"

# A push consumer on an account that may not use any `$JS.API` subject: exactly the
# permissions the README lists for consumer_mode :push (auto_provision and verify_topology
# off), the durable provisioned beforehand by an admin account as `rake
# jetstream_bridge:provision` does. A round trip with an ack, a NAK with the backoff, a
# handler slower than ack_wait (progress acks, the waiting message given back) and a dead
# letter; the server logs no permission violation.
RSpec.describe "Least privilege, push consumer (no $JS.API)" do
  include ConsumerHelpers

  env, names, stream, durable = LeastPrivilege.app_names("lpp")
  delivery = "#{names['subscribe_subject']}.#{durable}"
  # The README's permission table for a push consumer.
  app_publish = [names["publish_subject"], names["dlq_subject"], "$JS.ACK.#{stream}.#{durable}.>"]
  app_subscribe = [delivery, "_INBOX.>", "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.#{stream}"]
  LeastPrivilege.serve(self, "app" => { publish: app_publish, subscribe: app_subscribe },
                             "nosub" => { publish: app_publish, subscribe: app_subscribe - [delivery] })

  it "consumes from a push durable an admin provisioned: acks, NAKs, progress acks and a dead letter, no API request, no violation" do
    settings = { env: env, consumer_mode: :push, use_dlq: true, max_deliver: 2, backoff: %w[100ms], ack_wait: "1s" }
    configure_bridge(server: url_for("admin"), **settings)
    provisioned = JetstreamBridge.provision!
    expect(provisioned[:consumer].first).to eq("created")
    config = NatsApi.consumer_info(url_for("admin"), stream, durable)["config"]
    expect(config).to include("deliver_subject" => delivery, "deliver_group" => durable, "ack_policy" => "explicit")

    configure_bridge(server: url_for("app"), auto_provision: false, verify_topology: false, **settings)
    expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })).to be(true)
    # The other app publishes to this one: an event handled at once, one handled after a
    # NAK, one its handler refuses every time; then one slower than ack_wait, and one
    # waiting behind it (given back, then handled).
    publish = ->(ids) { ids.each { |id| NatsApi.publish_with_headers(url_for("admin"), names["subscribe_subject"], envelope(id), { "Nats-Msg-Id" => id }) } }
    publish.(%w[good retried refused])
    _, calls = run_recording_consumer do |call|
      raise IOError, "not yet" if call.id == "retried" && call.deliveries == 1
      raise "refused" if call.id == "refused"

      sleep 1.6 if call.id == "slow"
    end
    eventually(timeout: 20) { calls.for("refused").size == 2 && calls.for("retried").size == 2 && calls.for("good").any? }
    dlq = eventually(timeout: 15) { (m = NatsApi.get_message(url_for("admin"), stream, 5)) && m[0] == names["dlq_subject"] && m }
    expect(JSON.parse(dlq[1])["event_id"]).to eq("refused")
    expect(dlq[2]).to include("X-Dead-Letter-Reason" => "max_deliver", "X-Deliveries" => "2")
    publish.(%w[slow behind])
    eventually(timeout: 20) { calls.for("slow").any? && calls.for("behind").any? }
    eventually(timeout: 10) do
      info = NatsApi.consumer_info(url_for("admin"), stream, durable)
      info["num_ack_pending"].zero? && info["num_pending"].zero?
    end
    expect(calls.for("slow").map(&:deliveries)).to eq([1]) # kept alive past ack_wait
    expect(calls.for("good").size).to eq(1)
    expect(calls.for("behind").size).to eq(1)
    eventually { log_output.match?(/waiting message\(s\) given back/) }
    expect(JetstreamBridge.health_check).to include(healthy: true, nats_connected: true)
    stop_consumers

    violations = File.readlines(@server.log).grep(/violation/i)
    expect(violations).to be_empty
    expect(consumer_errors).to be_empty
    expect(log_output).not_to match(/AuthorizationError|Permissions Violation/i)
  end

  it "ends run! with AuthorizationError naming the delivery subject when the account may not subscribe to it" do
    settings = { env: env, consumer_mode: :push }
    configure_bridge(server: url_for("admin"), **settings)
    JetstreamBridge.provision!
    configure_bridge(server: url_for("nosub"), auto_provision: false, verify_topology: false, **settings)

    consumer = JetstreamBridge.subscribe { |*| }
    expect { Timeout.timeout(10) { consumer.run! } }
      .to raise_error(JetstreamBridge::AuthorizationError, /may not subscribe to its delivery subject #{Regexp.escape(delivery)}/)
  end
end
