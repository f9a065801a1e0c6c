# frozen_string_literal: true

require "active_support"
require "active_support/notifications"
require_relative "../support/consumer_helpers"

# Structured events (README "Instrumentation") from real publishes, consumers, relays and
# connections, seen through ActiveSupport::Notifications and the built-in hook.
RSpec.describe "Instrumentation" do
  include ConsumerHelpers

  after do
    stop_consumers
    @subscriptions&.each { |s| ActiveSupport::Notifications.unsubscribe(s) }
    @own&.each { |s| JetstreamBridge.instrumenter.unsubscribe(s) }
  end

  # Events named `name` seen through ActiveSupport::Notifications: [[payload, duration ms]].
  def capture(name)
    seen = Queue.new
    (@subscriptions ||= []) << ActiveSupport::Notifications.subscribe(name) { |event| seen << [event.payload.dup, event.duration] }
    seen
  end

  # Events seen through JetstreamBridge.instrumenter (no ActiveSupport involved).
  def capture_own(pattern)
    seen = Queue.new
    (@own ||= []) << JetstreamBridge.instrumenter.subscribe(pattern) { |name, payload| seen << [name, payload.dup] }
    seen
  end

  def drain(queue) = Array.new(queue.size) { queue.pop }

  # The generator's outbox and inbox tables on SQLite, empty.
  def sqlite_tables!
    require_relative "../support/active_record_db"
    ActiveRecordDb.sqlite.activate!.truncate!
  end

  describe "publish.jetstream_bridge" do
    it "carries the event id, type, subject, stream, sequence, duplicate flag, attempts and duration" do
      configure_bridge
      seen = capture("publish.jetstream_bridge")
      own = capture_own("publish.jetstream_bridge")
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "evt-1")
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "evt-1") # a duplicate
      JetstreamBridge.publish(event_type: "user.updated", payload: { id: 2 }, headers: { "X-Tenant" => "acme" })

      payloads = drain(seen).map(&:first)
      expect(payloads.size).to eq(3)
      first = payloads[0]
      expect(first).to include(event_id: "evt-1", event_type: "user.created", subject: JetstreamBridge.config.source_subject,
                               stream: stream_name, seq: 1, duplicate: false, attempts: 1, outbox: false)
      expect(first[:duration]).to be_a(Float).and(be >= 0)
      expect(payloads[1]).to include(event_id: "evt-1", duplicate: true, seq: 1)
      expect(payloads[2]).to include(event_type: "user.updated", seq: 2, attempts: 1)
      expect(payloads[2][:event_id]).to match(/\A\h{8}-/)
      expect(drain(own).map { |name, p| [name, p[:seq]] }).to eq([["publish.jetstream_bridge", 1]] * 2 + [["publish.jetstream_bridge", 2]])
    end

    it "is sent with the error's class and redacted message when the publish raises" do
      configure_bridge(server: "nats://bob:s3cret@127.0.0.1:#{NatsServer.free_ports(1).first}", connect_timeout: "200ms", publish_attempts: 1)
      own = capture_own("publish.jetstream_bridge")
      expect { JetstreamBridge.publish(event_type: "user.created", payload: {}) }.to raise_error(JetstreamBridge::ConnectionError)
      (_, payload), = drain(own)
      expect(payload).to include(error_class: "JetstreamBridge::ConnectionError", event_type: "user.created")
      expect(payload[:error_message]).not_to include("s3cret")
      expect(payload[:duration]).to be >= 0
    end

    it "publish_batch.jetstream_bridge counts published, duplicates and failures" do
      configure_bridge
      seen = capture("publish_batch.jetstream_bridge")
      events = Array.new(5) { |i| { event_type: "user.created", payload: { id: i }, event_id: "b-#{i % 4}" } }
      JetstreamBridge.publish_batch(events)
      (payload, duration), = drain(seen)
      expect(payload).to include(count: 5, published: 5, duplicates: 1, failed: 0)
      expect(duration).to be >= 0
    end
  end

  describe "process.jetstream_bridge" do
    it "reports each outcome with the error, the delivery count and the trace context" do
      configure_bridge(use_dlq: true, max_deliver: 2, backoff: %w[50ms])
      seen = capture("process.jetstream_bridge")
      dead = capture("dead_letter.jetstream_bridge")
      traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "ok-1", subject: dest_subject,
                              headers: { "traceparent" => traceparent, "tracestate" => "vendor=1" })
      JetstreamBridge.publish(event_type: "user.failed", payload: { id: 2 }, event_id: "bad-1", subject: dest_subject)
      run_recording_consumer { |call| raise IOError, "disk full for nats://u:hunter2@h" if call.id == "bad-1" }
      eventually { dlq_messages.size == 1 && seen.size >= 3 }

      payloads = drain(seen).map(&:first)
      ok = payloads.find { |p| p[:event_id] == "ok-1" }
      expect(ok).to include(event_type: "user.created", subject: dest_subject, stream: stream_name, deliveries: 1,
                            outcome: :ack, traceparent: traceparent, tracestate: "vendor=1",
                            consumer_name: JetstreamBridge.config.durable_name)
      expect(ok[:stream_seq]).to be_positive
      expect(ok).not_to include(:error_class)
      bad = payloads.select { |p| p[:event_id] == "bad-1" }
      expect(bad.map { |p| [p[:deliveries], p[:outcome]] }).to eq([[1, :nak], [2, :dead_letter]])
      expect(bad).to all(include(error_class: "IOError"))
      expect(bad.first[:error_message]).to include("disk full")
      expect(bad.first[:error_message]).not_to include("hunter2")
      (letter,), = drain(dead)
      expect(letter).to include(event_id: "bad-1", reason: "max_deliver", error_class: "IOError",
                                dlq_subject: JetstreamBridge.config.dlq_subject)
    end

    it "says skipped_duplicate when the inbox had processed the event (SQLite)" do
      sqlite_tables!
      configure_bridge(use_inbox: true)
      seen = capture("process.jetstream_bridge")
      2.times { publish_raw_body(JSON.generate(event_id: "same", event_type: "user.created", payload: {}), msg_id: SecureRandom.uuid) }
      _, calls = run_recording_consumer
      eventually { seen.size == 2 }
      expect(drain(seen).map { |p, _| p[:outcome] }).to eq(%i[ack skipped_duplicate])
      expect(calls.size).to eq(1)
    end
  end

  describe "outbox_relay.jetstream_bridge" do
    it "counts what one relay pass claimed and sent" do
      sqlite_tables!
      configure_bridge(use_outbox: true)
      JetstreamBridge::Outbox.suspend!("spec: leave the rows for the relay")
      3.times { |i| JetstreamBridge.publish(event_type: "user.created", payload: { id: i }, headers: { "X-N" => i.to_s }) }
      JetstreamBridge::Outbox.resume!
      seen = capture("outbox_relay.jetstream_bridge")
      JetstreamBridge::OutboxRelay.new.flush
      payloads = drain(seen).map(&:first)
      expect(payloads.first).to include(claimed: 3, sent: 3, duplicates: 0, failed: 0)
      expect(stream_messages.map { |_, _, headers| headers["X-N"] }).to eq(%w[0 1 2])
    end
  end

  describe "connection.jetstream_bridge" do
    include_context "with its own nats-server"

    it "reaches subscribers within a second of a disconnect and a reconnect, with no bridge call, with the core's time" do
      configure_bridge(server: @server)
      seen = capture_own("connection.jetstream_bridge")
      JetstreamBridge.ensure_topology!
      eventually(timeout: 3) { seen.size >= 1 }
      expect(drain(seen).map { |_, p| p[:event] }).to eq([:connected])

      @server.stop
      stopped = monotonic
      eventually(timeout: 3, interval: 0.01) { !seen.empty? }
      disconnect_seen = monotonic - stopped
      (_, disconnected), = drain(seen)
      expect(disconnected).to include(event: :disconnected)
      expect(Time.iso8601(disconnected[:at])).to be_within(5).of(Time.now)
      expect(disconnect_seen).to be < 1.5

      @server.start
      # The client's IO errors from its failed attempts may come first: wait for the reconnect itself.
      events = []
      eventually(timeout: 10, interval: 0.01) do
        events.concat(drain(seen).map { |_, p| p })
        events.any? { |p| p[:event] == :reconnected }
      end
      reconnected = events.find { |p| p[:event] == :reconnected }
      expect(reconnected).not_to be_nil, "events: #{events.inspect}"
      expect(reconnected[:server]).to include(@server.port.to_s)
      expect(log_output).to include("NATS disconnected")
    end

    def watchers = Thread.list.map(&:name).count("jetstream_bridge-events")

    it "stops the watcher thread when the connection closes, and a forked child watches its own connection" do
      configure_bridge(server: @server)
      JetstreamBridge.ensure_topology!
      expect(watchers).to eq(1)
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        inherited = watchers # threads do not survive fork
        JetstreamBridge.publish(event_type: "user.created", payload: {})
        writer.write(JSON.generate([inherited, watchers]))
        writer.close
        exit!(0)
      end
      writer.close
      Process.wait(pid)
      expect(JSON.parse(reader.read)).to eq([0, 1])

      watcher = Thread.list.find { |t| t.name == "jetstream_bridge-events" }
      JetstreamBridge::Connection.close!
      expect(watcher.join(2)).to be_truthy
      expect(watchers).to eq(0)
    end
  end

  describe "on_error" do
    it "is called once per handler failure with the MessageContext, and an on_error that raises reaches only the log" do
      reports = Queue.new
      configure_bridge(backoff: %w[50ms], max_deliver: 3, on_error: lambda { |error, context|
        reports << [error.class, context.event_id, context.deliveries]
        raise "reporter down"
      })
      ids = publish_incoming(2)
      _, calls = run_recording_consumer { |call| raise IOError, "boom" if call.id == ids[0] && call.deliveries < 3 }
      eventually { calls.size == 4 }
      # Both acked, the failed one after its third delivery: every failure was reported by then.
      eventually { consumer_info.then { |info| info["num_ack_pending"].zero? && info.dig("ack_floor", "stream_seq") == 2 } }
      expect(drain(reports)).to eq([[IOError, ids[0], 1], [IOError, ids[0], 2]])
      expect(log_output).to include("on_error raised RuntimeError: reporter down (reporting IOError)")
    end

    it "goes to Rails.error when none is set and Rails.error exists (Rails 7+)" do
      reported = []
      rails_error = Object.new
      rails_error.define_singleton_method(:report) { |error, handled:, context:| reported << [error.message, handled, context] }
      stub_const("Rails", Module.new)
      Rails.define_singleton_method(:error) { rails_error }
      configure_bridge(backoff: %w[50ms])
      ids = publish_incoming(1)
      _, calls = run_recording_consumer { |call| raise IOError, "once" if call.deliveries == 1 }
      eventually { calls.size == 2 }
      expect(reported.size).to eq(1)
      message, handled, context = reported.first
      expect([message, handled]).to eq(["once", true])
      expect(context[:jetstream_bridge]).to include(event_id: ids[0], deliveries: 1)
    end
  end
end
