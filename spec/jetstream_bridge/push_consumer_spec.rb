# frozen_string_literal: true

require "json"
require "securerandom"
require "timeout"
require_relative "../support/active_record_db"
require_relative "../support/consumer_child"
require_relative "../support/consumer_helpers"

# consumer_mode: :push against the shared real nats-server: a push durable delivering to
# its own subject in a deliver group, and the pull consumer's guarantees on it (acks, NAKs
# with the backoff, the DLQ at max_deliver, progress acks, giving back at stop and while
# its handlers are overdue, per-key order at concurrency 4, the inbox), and two processes
# sharing one durable through its deliver group.
RSpec.describe "Push consumers" do
  include ConsumerHelpers
  ConsumerChild.killed_after_each(self)

  def configure_push(**settings) = configure_bridge(consumer_mode: :push, **settings)

  def durable = JetstreamBridge.config.durable_name

  # The default delivery subject: the subscribe subject and the durable's name.
  def delivery_subject = "#{dest_subject}.#{durable}"

  # Queue subscriptions on `subject`, on every connection to the shared server.
  def group_members(subject)
    connections = shared_server.monitor("connz?subs=detail").fetch("connections")
    connections.sum { |c| Array(c["subscriptions_list_detail"]).count { |sub| sub["subject"] == subject && sub["qgroup"] } }
  end


  def push_child(**env)
    ConsumerChild.new({ "NATS_URL" => bridge_url, "JSB_ENV" => bridge_env, "CONSUMER_MODE" => "push" }.merge(env)).tap { |c| children << c }
  end

  # The event ids a consumer child has finished handling.
  def done_ids(child) = child.output.grep(/\Adone /).map { |line| line.split[1] }

  it "provisions a push durable on its own delivery subject in a deliver group, and handles each event once, acked" do
    configure_push(ack_wait: "20s", max_deliver: 4)
    ids = publish_incoming(3)
    _, calls = run_recording_consumer

    eventually { calls.distinct_ids.size == 3 }
    info = wait_all_acked # all three acked: none can be delivered again
    expect(info["config"]).to include("deliver_subject" => delivery_subject, "deliver_group" => durable, "ack_policy" => "explicit",
                                      "ack_wait" => 20_000_000_000, "max_deliver" => 4, "filter_subject" => dest_subject)
    expect(info["config"].keys).not_to include("flow_control", "idle_heartbeat", "backoff")
    expect(group_members(delivery_subject)).to eq(1)
    expect(calls.ids).to eq(ids) # in stream order
    expect(calls.to_a.map(&:deliveries).uniq).to eq([1])
    expect(info.dig("ack_floor", "stream_seq")).to eq(3)
    expect(info["num_redelivered"]).to eq(0)
    expect(info.dig("delivered", "consumer_seq")).to eq(3) # each delivered once
  end

  it "delivers to config.delivery_subject in config.push_consumer_group" do
    configure_push(delivery_subject: "deliveries.#{SecureRandom.hex(4)}", push_consumer_group: "billing-workers")
    id, = publish_incoming(1)
    _, calls = run_recording_consumer

    eventually { calls.for(id).any? }
    expect(consumer_info["config"]).to include("deliver_subject" => JetstreamBridge.config.delivery_subject, "deliver_group" => "billing-workers")
    expect(group_members(JetstreamBridge.config.delivery_subject)).to eq(1)
  end

  it "under subject_layout :app delivers to the pure-Ruby gem 7.x's default, {subscribe subject}.worker, on a workqueue stream" do
    tag = SecureRandom.hex(3)
    configure_push(subject_layout: :app, app_name: "api#{tag}", destination_app: "billing#{tag}", stream_name: "push-app-#{tag}")
    ids = publish_incoming(2)
    _, calls = run_recording_consumer

    eventually { calls.distinct_ids.size == 2 }
    expect(calls.ids).to eq(ids)
    expect(consumer_info["config"]).to include("deliver_subject" => "billing#{tag}.sync.api#{tag}.worker", "deliver_group" => "api#{tag}-workers")
    expect(JSON.parse(native_client.stream_info(stream_name)).dig("config", "retention")).to eq("workqueue")
    eventually { consumer_info["num_ack_pending"].zero? }
    expect(JetstreamBridge.config.delivery_subject_for("other-workers")).to eq("billing#{tag}.sync.api#{tag}.other-workers")
  end

  it "NAKs a failing handler with the backoff delay, then dead-letters it at max_deliver; the others are handled once" do
    configure_push(use_dlq: true, max_deliver: 3, backoff: %w[300ms 600ms], ack_wait: "30s")
    poison, *others = publish_incoming(4)
    _, calls = run_recording_consumer { |c| raise "boom #{c.id}" if c.id == poison }

    eventually(timeout: 10) { calls.for(poison).size == 3 }
    _, body, headers = eventually(timeout: 10) { dlq_messages.first }
    times = calls.for(poison).map(&:at)
    expect(times[1] - times[0]).to be_between(0.27, 0.3 + 0.5)
    expect(times[2] - times[1]).to be_between(0.54, 0.6 + 0.5)
    expect(calls.for(poison).map(&:deliveries)).to eq([1, 2, 3])
    expect(JSON.parse(body)["event_id"]).to eq(poison)
    expect(headers).to include("X-Dead-Letter-Reason" => "max_deliver", "X-Error-Message" => "boom #{poison}", "X-Deliveries" => "3",
                               "X-Consumer" => durable, "X-Original-Msg-Id" => poison, "X-Original-Subject" => dest_subject)
    info = eventually { (i = consumer_info) && i["num_ack_pending"].zero? && i }
    expect(info["config"]["max_deliver"]).to eq(-1) # with use_dlq the bridge counts deliveries
    others.each { |id| expect(calls.for(id).map(&:deliveries)).to eq([1]) }
  end

  it "keeps a slow handler's message alive past ack_wait with progress acks; those waiting behind it come back once" do
    configure_push(ack_wait: "1s", max_deliver: 5, backoff: %w[100ms])
    expect_slow_handler_kept_alive
  end

  it "takes no more while its handler outlasts ack_wait: what it held goes to another member of the group" do
    configure_push(ack_wait: "2s", max_deliver: 5)
    _hung, _thread, hung_calls, entered, release = start_hung_consumer
    eventually { group_members(delivery_subject) == 1 }
    ids = publish_incoming(30)
    pop_within(entered, 10) # it alone was subscribed: it was sent all 30

    _, calls = run_recording_consumer
    eventually(timeout: 15) { calls.distinct_ids.size == 29 }
    expect(group_members(delivery_subject)).to eq(1) # the hung one has unsubscribed
    expect(consumer_info["num_ack_pending"]).to eq(1) # only the message in the hung handler
    release << true
    eventually { consumer_info["num_ack_pending"].zero? }
    eventually { group_members(delivery_subject) == 2 } # subscribed again once its handler returned
    expect(hung_calls.size).to eq(1)
    expect((calls.ids + hung_calls.ids).sort).to eq(ids.sort) # each handled exactly once
  end

  it "at stop acks the message in flight and gives back what it holds at once: another process gets it" do
    configure_push(ack_wait: "30s")
    ids = publish_incoming(30)
    calls = stop_while_handling(ids, batch_size: 5)
    expect(group_members(delivery_subject)).to eq(0)

    child = push_child
    eventually(timeout: 20) { group_members(delivery_subject) == 1 }
    started = monotonic
    eventually(timeout: 8) { done_ids(child).size == 29 }
    expect(monotonic - started).to be < 5 # given back, not left to wait out ack_wait (30 s)
    expect(done_ids(child).sort).to eq((ids - [ids.first]).sort)
    eventually { consumer_info["num_ack_pending"].zero? } # the one in flight was acked
    expect(consumer_info.dig("ack_floor", "stream_seq")).to eq(30)
  end

  it "runs handlers at concurrency 4, one at a time per key in stream order, keys side by side" do
    configure_push(batch_size: 20)
    events = (0...10).flat_map do |n|
      (0...8).map { |k| { resource_type: "account", event_type: "changed", payload: { id: "acct-#{k}", n: n }, subject: dest_subject } }
    end
    expect(JetstreamBridge.publish_batch(events).success?).to be(true)
    log = Queue.new
    handler = lambda do |event, _subject, _deliveries|
      started = monotonic
      sleep rand * 0.01 # the scenario: handlers that take a while, so keys overlap
      log << [event["payload"]["id"], event["payload"]["n"], Thread.current.name, started, monotonic]
    end
    start_consumer(JetstreamBridge::Consumer.new(handler, concurrency: 4))

    eventually(timeout: 20) { log.size == 80 }
    calls = Array.new(log.size) { log.pop }
    calls.group_by(&:first).each do |key, handled|
      expect(handled.map { |c| c[1] }).to eq((0...10).to_a), "#{key} out of order"
      handled.each_cons(2) { |a, b| expect(b[3]).to be >= a[4], "#{key}: #{b[1]} started before #{a[1]} finished" }
    end
    expect(calls.map { |c| c[2] }.uniq.size).to be > 1
    expect(calls.combination(2).count { |a, b| a[0] != b[0] && a[3] < b[4] && b[3] < a[4] }).to be_positive
    eventually { (info = consumer_info)["num_ack_pending"].zero? && info["num_pending"].zero? }
  end

  it "with use_inbox runs the handler once for an event stored twice" do
    db = ActiveRecordDb.sqlite
    db.activate!.truncate!
    configure_push(use_inbox: true)
    JetstreamBridge.ensure_topology!
    id = SecureRandom.uuid
    body = JetstreamBridge::Event.build(event_type: "widget.created", payload: { id: 1 }, event_id: id, subject: dest_subject).json
    conn = NatsApi::Conn.new(bridge_url, 5)
    2.times { conn.publish(dest_subject, body) } # no Nats-Msg-Id: the stream stores both
    conn.ping
    conn.close
    _, calls = run_recording_consumer

    eventually { (i = consumer_info) && i.dig("delivered", "stream_seq") == 2 && i["num_ack_pending"].zero? }
    expect(calls.ids).to eq([id])
    row = JetstreamBridge::InboxEvent.find_by(event_id: id)
    expect(row).to have_attributes(status: "processed", deliveries: 1, stream: stream_name)
    expect(JetstreamBridge::InboxEvent.count).to eq(1)
  end

  it "shares the work between two processes in one deliver group, each event handled once" do
    configure_push(ack_wait: "30s")
    JetstreamBridge.ensure_topology!
    pair = [push_child("HANDLER_SLEEP" => "0.01"), push_child("HANDLER_SLEEP" => "0.01")]
    eventually(timeout: 20) { group_members(delivery_subject) == 2 }
    ids = publish_incoming(100)

    eventually(timeout: 30) { pair.sum { |child| done_ids(child).size } >= 100 }
    eventually { consumer_info["num_ack_pending"].zero? }
    handled = pair.map { |child| done_ids(child) }
    expect(handled.flatten.sort).to eq(ids.sort) # every event, none twice
    expect(handled).to all(satisfy { |list| list.size >= 10 })
    deliveries = pair.flat_map { |child| child.output.grep(/\Astarted /).map { |line| line.split[2] } }
    expect(deliveries.uniq).to eq(["1"])
  end

  it "makes a push durable deleted under it again, where it was, and goes on" do
    configure_push(ack_wait: "5s")
    first, = publish_incoming(1)
    consumer, calls = run_recording_consumer
    eventually { calls.for(first).any? }
    eventually { consumer_info["num_ack_pending"].zero? }

    NatsApi.delete_consumer(bridge_url, stream_name, durable)
    eventually { consumer_info } # from its deletion advisory
    later = publish_incoming(3)
    eventually(timeout: 20) { later.all? { |id| calls.for(id).any? } }
    wait_all_acked # all four acked: had it started over, the first would have come on the way
    expect(calls.ids).to eq([first] + later) # nothing acked was handled again
    expect(consumer).not_to be_stopped
    expect(consumer_errors).to be_empty
  end

  it "turns a pull durable into a push durable (recreated where it was)" do
    configure_bridge(ack_wait: "5s")
    publish_incoming(3)
    pulling, pulled = run_recording_consumer
    eventually { pulled.size == 3 && consumer_info["num_ack_pending"].zero? }
    stop_consumer(pulling, running_consumers.last.last)

    configure_push(env: bridge_env, ack_wait: "5s")
    later = publish_incoming(2)
    _, pushed = run_recording_consumer
    eventually { pushed.size == 2 }
    wait_all_acked # all five acked: had it started over, the first three would have come on the way
    expect(pushed.ids).to eq(later)
    expect(consumer_info["config"]["deliver_subject"]).to eq(delivery_subject)
    expect(log_output).to match(/consumer #{durable} recreated: pull consumer -> push consumer/)
  end

  describe "settings" do
    it "defaults to pull, with the delivery subject and deliver group derived from the durable" do
      configure_bridge
      expect(JetstreamBridge::Config.new).to have_attributes(consumer_mode: :pull, delivery_subject: nil, push_consumer_group: nil)
      expect(JetstreamBridge.config.delivery_subject_for("d")).to eq("#{dest_subject}.d")
      expect(JetstreamBridge.config.deliver_group_for("d")).to eq("d")
    end

    it "refuses a consumer_mode other than :pull or :push, and a delivery subject or group the server cannot use" do
      expect { JetstreamBridge.configure(consumer_mode: :pushy) }
        .to raise_error(JetstreamBridge::ConfigurationError, /consumer_mode must be :pull or :push, got :pushy/)
      expect { JetstreamBridge.configure(delivery_subject: "deliveries.*") }
        .to raise_error(JetstreamBridge::ConfigurationError, /delivery_subject: .*wildcard/)
      expect { JetstreamBridge.configure(delivery_subject: "$JS.API.CONSUMER.INFO.S.D") }
        .to raise_error(JetstreamBridge::ConfigurationError, /delivery_subject: .*system subject/)
      expect { JetstreamBridge.configure(env: "e", app_name: "a", destination_app: "b", delivery_subject: "e.b.sync.a") }
        .to raise_error(JetstreamBridge::ConfigurationError, /delivery_subject e\.b\.sync\.a is a subject of the stream/)
      expect { JetstreamBridge.configure(push_consumer_group: "two words") }
        .to raise_error(JetstreamBridge::ConfigurationError, /push_consumer_group/)
      expect { JetstreamBridge.configure(consumer_mode: "push") }.not_to raise_error
    end

    it "refuses a push consumer on another durable while config.delivery_subject is the configured durable's" do
      configure_push(delivery_subject: "deliveries.#{SecureRandom.hex(4)}")
      expect { JetstreamBridge::Consumer.new(durable_name: "other-workers") { |*| } }
        .to raise_error(ArgumentError, /two push durables must not share a delivery subject/)
      expect(JetstreamBridge::Consumer.new { |*| }.durable_name).to eq(durable)
    end
  end
end
