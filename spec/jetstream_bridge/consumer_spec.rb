# frozen_string_literal: true

require "json"
require "time"
require "timeout"
require_relative "../support/consumer_helpers"

# Consuming against the shared real nats-server: the documented handler forms and their
# arguments, the durable as the server sees it, retries with client-side backoff, the DLQ,
# malformed bodies, slow handlers, graceful stop and a deleted durable.
RSpec.describe JetstreamBridge::Consumer do
  include ConsumerHelpers

  after { stop_consumers }

  # The stream sequence of the stored message whose envelope has this event_id.
  def seq_of(event_id)
    info = JSON.parse(JetstreamBridge::Connection.client.stream_info(stream_name))
    (info["state"]["first_seq"]..info["state"]["last_seq"]).find do |seq|
      subject, body, = stored_message(seq)
      subject == dest_subject && (JSON.parse(body)["event_id"] rescue nil) == event_id
    end
  end

  def last_seq
    JSON.parse(JetstreamBridge::Connection.client.stream_info(stream_name)).dig("state", "last_seq")
  end

  def expect_envelope(event, id)
    expect(event).to be_a(Hash)
    expect(event.keys).to all(be_a(String))
    expect(event).to include("event_id" => id, "event_type" => "created", "resource_type" => "user",
                             "schema_version" => 1, "payload" => { "id" => 1, "n" => 0 })
  end

  describe "handler forms and arguments" do
    before { configure_bridge }

    it "calls a subscribe block with the envelope Hash, the NATS subject and deliveries from 1" do
      calls = ConsumerHelpers::Calls.new
      consumer = JetstreamBridge.subscribe { |event, subject, deliveries| calls.record(event, subject, deliveries) }
      expect(consumer).to be_a(described_class)
      start_consumer(consumer)
      id, = publish_incoming(1)

      eventually { calls.size == 1 }
      call = calls.to_a.first
      expect_envelope(call.event, id)
      expect(call.subject).to eq(dest_subject)
      expect(call.subject).to eq("#{bridge_env}.other.sync.app")
      expect(call.deliveries).to eq(1)
      wait_all_acked # acked on the server: it cannot come again
      expect(calls.size).to eq(1)
    end

    it "calls a handler object's #call with the same arguments" do
      handler_class = Class.new do
        attr_reader :calls

        def initialize = @calls = ConsumerHelpers::Calls.new
        def call(event, subject, deliveries) = @calls.record(event, subject, deliveries)
      end
      handler = handler_class.new
      start_consumer(JetstreamBridge.subscribe(handler))
      id, = publish_incoming(1)

      eventually { handler.calls.size == 1 }
      call = handler.calls.to_a.first
      expect_envelope(call.event, id)
      expect([call.subject, call.deliveries]).to eq([dest_subject, 1])
    end

    # As handlers written for the pure-Ruby jetstream_bridge 7.x read it.
    it "calls a handler that takes one argument with the event, readable as the Hash and by method" do
      events = Queue.new
      handler = Class.new do
        define_method(:call) { |event| events << event }
      end
      id, = publish_incoming(1, resource_id: "42", payload: { id: 42, name: "Zoë", address: { city: "Malmö" } })
      start_consumer(JetstreamBridge.subscribe(handler.new))
      event = events.pop
      expect(event["payload"]).to eq("id" => 42, "name" => "Zoë", "address" => { "city" => "Malmö" })
      expect(event["event_id"]).to eq(id)
      expect([event.payload, event.event_type, event.type, event.event_id, event.resource_type, event.resource_id])
        .to eq([event["payload"], event["event_type"], event["event_type"], id, "user", "42"])
      expect([event.payload.id, event.payload[:name], event.payload["name"], event.payload.dig(:address, :city)]).to eq([42, "Zoë", "Zoë", "Malmö"])
      expect(event.payload).to respond_to(:name)
      expect { event.payload.missing }.to raise_error(NoMethodError)
      expect(event.occurred_at).to eq(Time.iso8601(event["occurred_at"]))
      expect([event.producer, event.trace_id, event.schema_version]).to eq([event["producer"], event["trace_id"], 1])
      expect([event.subject, event.deliveries]).to eq([dest_subject, 1])
      expect(event.metadata.to_h.except(:timestamp))
        .to eq(subject: dest_subject, deliveries: 1, stream: stream_name, sequence: event.sequence, consumer: JetstreamBridge.config.durable_name)
      expect(event.sequence).to be_a(Integer)
      expect(event.to_envelope).to eq(event["payload"] && event.to_h).and be_an_instance_of(Hash)
      expect(event).to be_a(Hash)
    end

    it "runs on a background Thread with run: true, which Thread#kill ends" do
      queue = Queue.new
      thread = JetstreamBridge.subscribe(run: true) { |event, subject, deliveries| queue << [event, subject, deliveries] }
      begin
        expect(thread).to be_a(Thread)
        id, = publish_incoming(1)
        event, subject, deliveries = pop_within(queue, 10)
        expect_envelope(event, id)
        expect([subject, deliveries]).to eq([dest_subject, 1])
        expect(thread).to be_alive
      ensure
        thread.kill
      end
      expect(thread.join(5)).to eq(thread)
      expect(thread).not_to be_alive
    end

    it "calls the block given to Consumer.new" do
      calls = ConsumerHelpers::Calls.new
      consumer = described_class.new { |event, subject, deliveries| calls.record(event, subject, deliveries) }
      start_consumer(consumer)
      id, = publish_incoming(1)

      eventually { calls.size == 1 }
      expect_envelope(calls.to_a.first.event, id)
      expect([calls.to_a.first.subject, calls.to_a.first.deliveries]).to eq([dest_subject, 1])
    end

    it "requires a block or a callable" do
      expect { described_class.new }.to raise_error(ArgumentError, /block or an object responding to #call/)
      expect { JetstreamBridge.subscribe(Object.new) }.to raise_error(ArgumentError)
    end

    # Such a handler would raise ArgumentError on every delivery and dead-letter everything.
    it "refuses a handler whose call cannot take (event), (event, subject, deliveries) or a fourth argument, naming it" do
      two = Class.new { def call(event, subject) = [event, subject] }
      keyword = Class.new { def call(event, subject, deliveries, tenant:) = [event, subject, deliveries, tenant] }
      expect { JetstreamBridge.subscribe(two.new) }
        .to raise_error(ArgumentError, /\Asubscribe: the handler's call\(event, subject\) cannot be called with \(event\), \(event, subject, deliveries\)/)
      expect { JetstreamBridge.subscribe(->(event, subject) { [event, subject] }) }.to raise_error(ArgumentError, /call\(event, subject\)/)
      expect { JetstreamBridge.subscribe(keyword.new) }.to raise_error(ArgumentError, /call\(event, subject, deliveries, tenant:\)/)
      expect { JetstreamBridge.subscribe(two.new.method(:call)) }.to raise_error(ArgumentError, /call\(event, subject\)/)

      # What can take them is accepted: blocks (any arity), one argument, optional and rest parameters.
      one = Class.new { def call(event) = event }
      [proc { |event| event }, one.new, one.new.method(:call), ->(event) { event }, ->(*args) { args },
       ->(event, subject = nil, deliveries = nil) { [event, subject, deliveries] },
       ->(event, subject, deliveries, context) { [event, subject, deliveries, context] }].each do |handler|
        expect(JetstreamBridge.subscribe(handler)).to be_a(described_class)
      end
    end

    it "honours durable_name: the durable exists on the server under that name" do
      calls = ConsumerHelpers::Calls.new
      consumer = JetstreamBridge.subscribe(durable_name: "my-custom-consumer", batch_size: 7) do |e, s, d|
        calls.record(e, s, d)
      end
      expect([consumer.durable_name, consumer.batch_size]).to eq(["my-custom-consumer", 7])
      start_consumer(consumer)
      publish_incoming(1)
      eventually { calls.size == 1 }

      info = consumer_info("my-custom-consumer")
      expect(info).not_to be_nil
      expect(info["config"]["durable_name"]).to eq("my-custom-consumer")
      expect(info["config"]["filter_subject"]).to eq(dest_subject)
      expect(consumer_info).to be_nil # no durable under the default name
      expect(JetstreamBridge.config.durable_name).to eq("#{bridge_env}-app-workers")
    end

    it "honours batch_size: a worker holds its batch and at most one more prefetched" do
      in_flight = lambda do |batch_size, durable|
        release = Queue.new
        entered = Queue.new
        consumer = JetstreamBridge.subscribe(durable_name: durable, batch_size: batch_size) do |_e, _s, _d|
          entered << true
          release.pop
        end
        thread = start_consumer(consumer)
        pop_within(entered, 10)
        sleep 0.7 # the window in which a prefetch past the bound would show: nothing outside says fetching has stopped
        pending = consumer_info(durable).fetch("num_ack_pending")
        consumer.stop!
        release.close
        thread.join(10)
        pending
      end
      publish_incoming(200)

      small = in_flight.call(2, "small-batch")
      large = in_flight.call(60, "large-batch")
      expect(small).to be <= 4
      expect(large).to be_between(60, 120)
    end
  end

  describe "the durable on the server" do
    it "matches the configuration: ack_wait in nanoseconds, max_deliver, filter, explicit acks, no server backoff" do
      configure_bridge(ack_wait: "7s", max_deliver: 4, backoff: %w[1s 2s 3s])
      start_consumer(described_class.new { |*| nil })
      info = eventually { consumer_info }
      config = info["config"]

      expect(config["durable_name"]).to eq("#{bridge_env}-app-workers")
      expect(config["ack_wait"]).to eq(7_000_000_000)
      expect(config["max_deliver"]).to eq(4)
      expect(config["filter_subject"]).to eq(dest_subject)
      expect(config["ack_policy"]).to eq("explicit")
      expect(config["backoff"]).to be_nil.or(be_empty)
      expect(config["deliver_subject"]).to be_nil # a pull consumer
    end

    it "updates an existing durable when ack_wait or max_deliver change" do
      configure_bridge(ack_wait: "7s", max_deliver: 4, backoff: %w[1s])
      consumer = described_class.new { |*| nil }
      thread = start_consumer(consumer)
      eventually { consumer_info }
      stop_consumer(consumer, thread)
      created = consumer_info["created"]

      configure_bridge(env: bridge_env, ack_wait: "9s", max_deliver: 6, backoff: %w[1s])
      start_consumer(described_class.new { |*| nil })
      eventually { consumer_info["config"]["ack_wait"] == 9_000_000_000 }
      info = consumer_info
      expect(info["config"]["max_deliver"]).to eq(6)
      expect(info["created"]).to eq(created) # updated in place, not recreated
      eventually { log_output.include?("updated") }
      expect(log_output).to match(/consumer #{bridge_env}-app-workers updated: .*ack_wait/)
    end

    it "removes a server-side backoff left on the durable by an older client" do
      configure_bridge(ack_wait: "30s", max_deliver: 5, backoff: %w[1s 5s])
      JetstreamBridge.ensure_topology!
      NatsApi.create_consumer(bridge_url, stream_name,
                              durable_name: JetstreamBridge.config.durable_name, ack_policy: "explicit",
                              deliver_policy: "all", filter_subject: dest_subject, max_deliver: 5,
                              ack_wait: 30_000_000_000, backoff: [1_000_000_000, 5_000_000_000])
      expect(consumer_info["config"]["backoff"]).to eq([1_000_000_000, 5_000_000_000])

      start_consumer(described_class.new { |*| nil })
      eventually { consumer_info["config"]["backoff"].to_a.empty? }
      expect(consumer_info["config"]["ack_wait"]).to eq(30_000_000_000)
    end

    it "recreates a durable made with another filter subject, keeping its position" do
      configure_bridge
      JetstreamBridge.ensure_topology!
      old_ids = publish_incoming(5)
      durable = JetstreamBridge.config.durable_name
      NatsApi.create_consumer(bridge_url, stream_name,
                              durable_name: durable, ack_policy: "explicit", deliver_policy: "all",
                              filter_subject: "#{bridge_env}.other.sync.*", max_deliver: 5,
                              ack_wait: 30_000_000_000)
      fetched = NatsApi.fetch_and_ack(bridge_url, stream_name, durable, 5)
      expect(fetched.map { |_, body| JSON.parse(body)["event_id"] }).to eq(old_ids)
      eventually { consumer_info.dig("ack_floor", "stream_seq") == 5 }
      new_ids = publish_incoming(3)

      _, calls = run_recording_consumer
      eventually { calls.size >= 3 }
      wait_all_acked # all 8 acked: had it started over, the first 5 would have been handled on the way
      expect(calls.ids).to eq(new_ids)
      expect(consumer_info["config"]["filter_subject"]).to eq(dest_subject)
      expect(log_output).to match(/consumer #{durable} recreated: filter_subject/)
    end

    it "creates the durable on any server with a backoff longer than max_deliver - 1 (never sent to the server)" do
      configure_bridge(max_deliver: 3, backoff: %w[1s 2s 3s 4s 5s])
      run_recording_consumer
      info = eventually { consumer_info }
      expect(info["config"]["max_deliver"]).to eq(3)
      expect(info["config"]).not_to have_key("backoff")
    end
  end

  describe "failures, retries and the dead-letter queue" do
    def dlq_headers_for(seq)
      dlq = dlq_messages
      expect(dlq.size).to eq(1), "expected one DLQ message, got #{dlq.size}"
      subject, body, headers = dlq.first
      expect(subject).to eq(dlq_subject)
      original_subject, original_body, = stored_message(seq)
      expect(original_subject).to eq(dest_subject)
      expect(body).to eq(original_body)
      headers
    end

    it "retries a poison message max_deliver times, dead-letters it once, and handles the other 99 exactly once" do
      configure_bridge(use_dlq: true, max_deliver: 3, backoff: %w[50ms 50ms])
      ids = publish_incoming(100)
      poison = ids[41]
      _, calls = run_recording_consumer(batch_size: 10) { |c| raise "boom #{c.id}" if c.id == poison }

      eventually(timeout: 20) { calls.distinct_ids.size == 100 && calls.for(poison).size == 3 }
      eventually(timeout: 10) { last_seq > 100 }
      wait_all_acked(through: 100) # every one acked or terminated: none can be delivered again

      expect(calls.for(poison).map(&:deliveries)).to eq([1, 2, 3])
      others = calls.to_a.reject { |c| c.id == poison }
      expect(others.size).to eq(99)
      expect(others.map(&:id).sort).to eq((ids - [poison]).sort)
      expect(others.map(&:deliveries).uniq).to eq([1])

      seq = seq_of(poison)
      headers = dlq_headers_for(seq)
      expect(headers).to include(
        "X-Dead-Letter-Reason" => "max_deliver", "X-Error-Class" => "RuntimeError",
        "X-Error-Message" => "boom #{poison}", "X-Deliveries" => "3",
        "X-Original-Subject" => dest_subject, "X-Stream-Seq" => seq.to_s,
        "X-Consumer" => JetstreamBridge.config.durable_name, "X-Original-Msg-Id" => poison,
        "Nats-Msg-Id" => "dlq:#{stream_name}:#{seq}"
      )
      expect(Time.iso8601(headers["X-Failed-At"])).to be_within(30).of(Time.now)
      info = eventually { (i = consumer_info) && i["num_ack_pending"].zero? && i }
      expect(info["num_pending"]).to eq(0)
      expect(log_output).to match(/WARN.*moved to #{Regexp.escape(dlq_subject)} \(max_deliver, delivery 3\)/)
    end

    it "dead-letters an unrecoverable error (ArgumentError) at the first attempt" do
      configure_bridge(use_dlq: true, max_deliver: 5, backoff: %w[50ms])
      bad, good = publish_incoming(2)
      _, calls = run_recording_consumer { |c| raise ArgumentError, "bad argument" if c.id == bad }

      eventually { calls.distinct_ids.size == 2 }
      eventually { last_seq == 3 }
      wait_all_acked
      expect(calls.for(bad).size).to eq(1)
      expect(calls.for(good).size).to eq(1)
      headers = dlq_headers_for(seq_of(bad))
      expect(headers).to include("X-Dead-Letter-Reason" => "unrecoverable", "X-Error-Class" => "ArgumentError",
                                 "X-Error-Message" => "bad argument", "X-Deliveries" => "1",
                                 "X-Original-Msg-Id" => bad)
    end

    it "dead-letters errors listed in config.unrecoverable_errors at once, and retries others" do
      poison_error = Class.new(StandardError)
      stub_const("PoisonPill", poison_error)
      configure_bridge(use_dlq: true, max_deliver: 5, backoff: %w[50ms], unrecoverable_errors: [PoisonPill])
      pill, argument = publish_incoming(2)
      _, calls = run_recording_consumer do |c|
        raise PoisonPill, "never works" if c.id == pill
        raise ArgumentError, "retried now" if c.id == argument && c.deliveries == 1
      end

      eventually { calls.for(argument).size == 2 }
      eventually { last_seq == 3 }
      wait_all_acked
      expect(calls.for(pill).size).to eq(1)
      expect(calls.for(argument).map(&:deliveries)).to eq([1, 2])
      expect(dlq_headers_for(seq_of(pill))).to include("X-Error-Class" => "PoisonPill", "X-Dead-Letter-Reason" => "unrecoverable")
    end

    it "spaces redeliveries by the backoff schedule (NAK delays; ack_wait stays long)" do
      configure_bridge(max_deliver: 3, backoff: %w[300ms 900ms], ack_wait: "30s")
      id, = publish_incoming(1)
      _, calls = run_recording_consumer { |_| raise "always" }

      eventually(timeout: 10) { calls.size == 3 }
      times = calls.for(id).map(&:at)
      gap1 = times[1] - times[0]
      gap2 = times[2] - times[1]
      expect(gap1).to be >= 0.27
      expect(gap1).to be < 0.3 + 0.5
      expect(gap2).to be >= 0.81
      expect(gap2).to be < 0.9 + 0.5
      expect(calls.for(id).map(&:deliveries)).to eq([1, 2, 3])
      # Without use_dlq the exhausted message is terminated and logged as an error.
      eventually { log_output.include?("dropped (max_deliver") }
      expect(log_output).to match(/ERROR.*dropped \(max_deliver, delivery 3; use_dlq is off\)/)
      eventually { consumer_info["num_ack_pending"].zero? }
    end

    it "dead-letters malformed and non-envelope bodies without calling the handler, and goes on" do
      configure_bridge(use_dlq: true, max_deliver: 3, backoff: %w[50ms 50ms])
      bodies = ["not json {", "[1,2]", '{"foo":1}', '{"event_type":"created"}']
      seqs = bodies.map { |body| publish_raw_body(body) }
      id, = publish_incoming(1)
      _, calls = run_recording_consumer

      eventually { calls.size == 1 }
      eventually { dlq_messages.size == bodies.size }
      wait_all_acked
      expect(calls.ids).to eq([id])

      dlq = dlq_messages
      expect(dlq.map { |_, body, _| body }).to match_array(bodies)
      dlq.each do |_, body, headers|
        seq = seqs[bodies.index(body)]
        expect(headers).to include("X-Dead-Letter-Reason" => "malformed", "X-Deliveries" => "1",
                                   "X-Original-Subject" => dest_subject, "X-Stream-Seq" => seq.to_s,
                                   "Nats-Msg-Id" => "dlq:#{stream_name}:#{seq}")
        expect(headers["X-Error-Message"]).not_to be_empty
      end
      expect(dlq.map { |*, h| h["X-Error-Message"] }.first).to match(/JSON/)
      info = consumer_info
      expect(info["num_ack_pending"]).to eq(0)
      expect(info["num_redelivered"]).to eq(0)
    end

    it "terminates malformed bodies without use_dlq (no redelivery) and logs an error" do
      configure_bridge(use_dlq: false, ack_wait: "1s", max_deliver: 3, backoff: %w[50ms 50ms])
      publish_raw_body("{{{")
      publish_raw_body('{"foo":1}')
      id, = publish_incoming(1)
      _, calls = run_recording_consumer

      eventually { calls.size == 1 }
      eventually { consumer_info.dig("ack_floor", "stream_seq") == 3 }
      info = wait_all_acked # none left unsettled: none can be back after ack_wait
      expect(calls.ids).to eq([id])
      expect(info["num_ack_pending"]).to eq(0)
      expect(info["num_redelivered"]).to eq(0)
      expect(info.dig("delivered", "consumer_seq")).to eq(3) # each delivered once
      expect(log_output.scan(/ERROR.*dropped \(malformed, delivery 1; use_dlq is off\)/).size).to eq(2)
      expect(dlq_messages).to be_empty
    end

    it "keeps consuming after handler exceptions and malformed messages" do
      configure_bridge(use_dlq: true, max_deliver: 3, backoff: %w[50ms 50ms])
      flaky, = publish_incoming(1)
      publish_raw_body("garbage")
      unrecoverable, = publish_incoming(1)
      last, = publish_incoming(1)
      consumer, calls = run_recording_consumer do |c|
        raise IOError, "transient" if c.id == flaky && c.deliveries == 1
        raise TypeError, "wrong" if c.id == unrecoverable
      end

      eventually { calls.for(flaky).size == 2 && calls.for(last).size == 1 && calls.for(unrecoverable).size == 1 }
      expect(running_consumers.map(&:last)).to all(be_alive)
      expect(consumer_errors).to be_empty
      later, = publish_incoming(1)
      eventually { calls.for(later).size == 1 }
      expect(consumer).not_to be_stopped
      expect(log_output).to match(/WARN.*handler failed on #{Regexp.escape(dest_subject)} \(delivery 1\/3\), retry in 50ms: IOError: transient/)
    end

    it "keeps consuming when a handler raises NotImplementedError (a ScriptError, not a StandardError)" do
      configure_bridge(use_dlq: true, max_deliver: 2, backoff: %w[50ms])
      abstract, = publish_incoming(1)
      _, calls = run_recording_consumer { |c| raise NotImplementedError, "subclass must implement" if c.id == abstract }

      eventually { calls.for(abstract).size >= 1 }
      after_it, = publish_incoming(1)
      eventually(timeout: 5) { calls.for(after_it).size == 1 }
      expect(consumer_errors).to be_empty
    end

    # Runs a consumer until run! ends (what it raised, or :returned) or, when it does not
    # end within `timeout` seconds, stops it (:idle).
    def run_once(timeout: 10, &handler)
      consumer = JetstreamBridge::Consumer.new(&handler)
      thread = Thread.new { consumer.run! }
      thread.report_on_exception = false
      begin
        return :returned if thread.join(timeout)
      rescue Exception => e # rubocop:disable Lint/RescueException
        return e
      end
      consumer.stop!
      join_quietly(thread, 15)
      :idle
    end

    {
      "Exception" => -> { raise Exception, "not a StandardError" }, # rubocop:disable Lint/RaiseException
      "NoMemoryError" => -> { raise NoMemoryError, "failed to allocate memory" },
      "Interrupt" => -> { raise Interrupt },
      "SignalException" => -> { raise SignalException, "TERM" },
      "SystemExit" => -> { exit 1 }
    }.each do |name, raiser|
      it "settles a message whose handler raises #{name} like any failure, logs an error each time, and ends run!" do
        configure_bridge(use_dlq: true, max_deliver: 2, backoff: %w[100ms])
        poison, = publish_incoming(1)
        # A supervisor restarting the worker after each crash.
        ended = Array.new(2) { run_once { |*| raiser.call } }
        expect(ended.map(&:class).map(&:name)).to eq([name, name])

        headers = eventually { (m = dlq_messages.first) && m[2] }
        expect(headers).to include("X-Dead-Letter-Reason" => "max_deliver", "X-Error-Class" => name,
                                   "X-Deliveries" => "2", "X-Original-Msg-Id" => poison)
        info = eventually { (i = consumer_info) && i["num_ack_pending"].zero? && i }
        expect(info["num_pending"]).to eq(0)
        expect(log_output.scan(/ERROR.*handler raised #{name} /).size).to eq(2)
      end
    end
  end

  describe "slow handlers" do
    it "handles a message once although the handler takes longer than ack_wait (progress acks)" do
      configure_bridge(ack_wait: "1s", max_deliver: 5, backoff: %w[100ms])
      info = expect_slow_handler_kept_alive(batch_size: 1)
      expect(info["num_ack_pending"]).to eq(0)
    end

    it "gives the messages waiting behind a handler that outlasts ack_wait to another worker" do
      # 3 s: progress acks every second keep the hung message; with 2 s, one late tick on a
      # loaded machine (four rspec workers, two cores) let it be redelivered once in CI.
      configure_bridge(ack_wait: "3s", max_deliver: 5)
      hung, hung_thread, hung_calls, entered, release = start_hung_consumer(batch_size: 10)
      ids = publish_incoming(30)
      pop_within(entered, 10)
      eventually { consumer_info["num_ack_pending"] >= 10 } # it holds its batch (and one prefetched, perhaps)
      expect(consumer_info["num_ack_pending"]).to be <= 20

      _, calls = run_recording_consumer(batch_size: 10)
      eventually(timeout: 15) { calls.distinct_ids.size == 29 }
      expect(consumer_info["num_ack_pending"]).to eq(1) # only the message in the hung handler
      release << true
      wait_all_acked
      stop_consumer(hung, hung_thread) # its run! has returned: its handler is called no more
      expect(hung_calls.size).to eq(1)
      expect((calls.ids + hung_calls.ids).sort).to eq(ids.sort) # each handled exactly once
    end

    it "lets go of the message of a handler stuck past max_handler_time, saying so: another worker gets it" do
      configure_bridge(ack_wait: "2s", max_handler_time: "1s", max_deliver: 5)
      release = Queue.new
      entered = Queue.new
      stuck = JetstreamBridge.subscribe do |_e, _s, _d|
        entered << true
        release.pop
      end
      start_consumer(stuck)
      id, = publish_incoming(1)
      pop_within(entered, 10)
      expect(stuck.handler_stuck?).to be(false)
      eventually(timeout: 10) { stuck.handler_stuck? }
      # Drained here: the consumer's own thread is in the handler.
      eventually do
        JetstreamBridge::Connection.drain_events
        log_output.match?(/handler stuck: running for [\d.]+s, past max_handler_time \(1\.0s\), with event #{id}/)
      end
      # No more progress acks: redelivered after ack_wait, to a plain client on the durable.
      taken = eventually(timeout: 10) do
        NatsApi.fetch_and_ack(bridge_url, stream_name, JetstreamBridge.config.durable_name, 1, timeout: 1).first
      end
      expect(JSON.parse(taken[1])["event_id"]).to eq(id)
      release << true
      eventually { !stuck.handler_stuck? }
    end

    it "keeps every message prefetched behind a slow handler alive (none redelivered, none handled twice)" do
      configure_bridge(ack_wait: "1s", max_deliver: 5, backoff: %w[100ms])
      ids = publish_incoming(40)
      _, calls = run_recording_consumer(batch_size: 5) { |c| sleep 2.5 if c.id == ids.first } # the scenario: past ack_wait

      eventually(timeout: 15) { calls.distinct_ids.size == 40 }
      info = wait_all_acked
      twice = calls.to_a.group_by(&:id).select { |_, list| list.size > 1 }
      seqs = twice.keys.map { |id| ids.index(id) + 1 }
      expect(seqs).to be_empty,
                      "stream seqs #{seqs.inspect} were redelivered by the server and handled twice " \
                      "(deliveries #{twice.values.flatten.map(&:deliveries).inspect}): not kept alive while prefetched"
      expect(calls.size).to eq(40)
      # The server delivered none again after it was handled (a copy redelivered while one waited would count).
      expect(info.dig("delivered", "consumer_seq")).to eq(deliveries_handled(calls))
    end
  end

  describe "graceful stop" do
    it "acks the in-flight message and returns prefetched ones to the server at once" do
      configure_bridge(ack_wait: "30s")
      ids = publish_incoming(30)
      calls = stop_while_handling(ids, batch_size: 5)

      started = monotonic
      _, calls2 = run_recording_consumer
      begin
        eventually(timeout: 8) { calls2.distinct_ids.size == 29 }
      rescue RuntimeError
        nil # reported below, with what is missing
      end
      missing = (ids - [ids.first] - calls2.ids).map { |id| ids.index(id) + 1 }
      expect(missing).to be_empty,
                         "stream seqs #{missing.inspect} were prefetched but not returned at stop: " \
                         "still ack-pending #{(monotonic - started).round(1)}s later (ack_wait 30s)"
      expect(monotonic - started).to be < 5 # well before ack_wait (30 s)
      expect(calls2.ids).not_to include(ids.first)
      expect(calls2.ids.sort).to eq((ids - [ids.first]).sort)
      eventually { consumer_info["num_ack_pending"].zero? } # the in-flight one was acked, not left pending
      expect(consumer_info.dig("ack_floor", "stream_seq")).to eq(30)
    end

    it "is stopped by JetstreamBridge.reset!: run! returns, the rest goes back, the handler is not called after" do
      configure_bridge(ack_wait: "30s")
      ids = publish_incoming(10)
      reset_done = false
      late_calls = Queue.new
      consumer, calls = run_recording_consumer(batch_size: 10) do |_|
        late_calls << true if reset_done
        sleep 0.2 # the scenario: reset! comes mid-batch
      end
      thread = running_consumers.last[1]
      eventually { calls.size >= 2 }
      JetstreamBridge.reset!
      reset_done = true
      expect(thread.join(1)).to be_truthy # run! has returned
      expect(consumer.stopped?).to be(true)
      handled = calls.ids # run! has returned, and its handlers run on its thread: none can be called after
      expect(late_calls).to be_empty
      expect(calls.ids).to eq(handled)

      configure_bridge(env: bridge_env, ack_wait: "30s")
      _, again = run_recording_consumer
      eventually(timeout: 10) { again.size == 10 - handled.size } # given back at once, not after ack_wait
      expect((handled + again.ids).sort).to eq(ids.sort)
    end

    # nats-server 2.9 serves a pull request whose inbox is gone: there the consumer lets its
    # requests run out (up to 1 s) before run! returns.
    def stop_bound = Gem::Version.new(shared_server.version) >= Gem::Version.new("2.10") ? 0.5 : 1.5

    it "stops at once when idle, and the pull request it leaves on the server takes nothing after" do
      configure_bridge(ack_wait: "30s")
      consumer = described_class.new { |*| nil }
      thread = start_consumer(consumer)
      eventually { consumer_info&.fetch("num_waiting")&.positive? } # a pull request is waiting on the server
      expect(stop_consumer(consumer, thread)).to be < stop_bound

      ids = publish_incoming(10)
      _, calls = run_recording_consumer
      eventually(timeout: 5) { calls.size == 10 } # not held for ack_wait by the old request
      expect(calls.ids).to eq(ids)
      expect(calls.to_a.map(&:deliveries).uniq).to eq([1])
    end

    # Before, a second run! replaced the first one's pull loop, which went on holding
    # messages nobody handled: those and every later one, until the process ended.
    it "refuses a second run! of a consumer whose run! is under way, and runs again once stopped" do
      configure_bridge(ack_wait: "30s")
      ids = publish_incoming(5)
      consumer, calls = run_recording_consumer { sleep 0.05 } # the scenario: the second run! comes mid-batch
      thread = running_consumers.last[1]
      eventually { calls.size >= 1 }
      second = Thread.new { consumer.run! rescue $! } # rubocop:disable Style/RescueModifier
      expect(second.join(5)&.value).to be_a(JetstreamBridge::ConsumerError)
        .and(have_attributes(message: /already running \(run! on spec-consumer\).*subscribe again/))
      eventually { calls.size == 5 } # the first run! goes on undisturbed
      expect(calls.ids).to eq(ids)
      stop_consumer(consumer, thread)

      later = publish_incoming(1)
      start_consumer(consumer)
      eventually { calls.size == 6 }
      expect(calls.ids.last).to eq(later.first)
    end

    it "stops right after the handler in flight when stop! is called from inside it" do
      configure_bridge(ack_wait: "30s")
      first, *rest = publish_incoming(5)
      consumer = nil
      consumer, calls = run_recording_consumer(batch_size: 5) { |_| consumer.stop! }
      thread = running_consumers.last[1]
      expect(thread.join(stop_bound)).to be_truthy
      expect(calls.ids).to eq([first])

      _, again = run_recording_consumer
      eventually(timeout: 5) { again.size == 4 } # given back at once, not after ack_wait
      expect(again.ids).to match_array(rest) # given back: redelivered in any order
    end

    it "returns unhandled messages at once when the run: true thread is killed mid-batch" do
      configure_bridge(ack_wait: "30s")
      ids = publish_incoming(10)
      entered = Queue.new
      handled = ConsumerHelpers::Calls.new
      thread = JetstreamBridge.subscribe(run: true, batch_size: 10) do |e, s, d|
        handled.record(e, s, d)
        entered << true
        sleep 0.5 # the scenario: the kill comes mid-batch
      end
      pop_within(entered, 10)
      eventually { consumer_info["num_ack_pending"] == 10 } # mid-batch, holding all ten
      thread.kill
      expect(thread.join(5)).to eq(thread)
      done = handled.ids

      started = monotonic
      _, calls2 = run_recording_consumer
      # The message in hand was interrupted: it may come back; the rest must, quickly.
      begin
        eventually(timeout: 8) { (ids - done).all? { |id| calls2.for(id).any? } }
      rescue RuntimeError
        nil # reported below, with what is missing
      end
      missing = (ids - done - calls2.ids).map { |id| ids.index(id) + 1 }
      expect(missing).to be_empty,
                         "stream seqs #{missing.inspect} not returned when the consumer thread was killed " \
                         "(handled before the kill: #{done.map { |id| ids.index(id) + 1 }.inspect})"
      expect(monotonic - started).to be < 5 # not after ack_wait (30 s)
    end
  end

  describe "a deleted durable" do
    it "is provisioned again and consumption continues" do
      configure_bridge(ack_wait: "5s")
      first, = publish_incoming(1)
      consumer, calls = run_recording_consumer
      eventually { calls.for(first).any? }
      durable = JetstreamBridge.config.durable_name
      eventually { consumer_info["num_ack_pending"].zero? }

      NatsApi.delete_consumer(bridge_url, stream_name, durable)
      expect(consumer_info).to be_nil
      later = publish_incoming(3)
      eventually(timeout: 20) { later.all? { |id| calls.for(id).any? } }
      expect(consumer_info).not_to be_nil
      expect(consumer).not_to be_stopped
      expect(consumer_errors).to be_empty
      wait_all_acked # all four acked: had it started over, the first would have come on the way
      expect(calls.ids).to eq([first] + later) # nothing acked was handled again
    end

    it "is recreated after the last message acked, though this worker NAK'd one that another worker acked" do
      configure_bridge(ack_wait: "1s", max_deliver: 1000, backoff: %w[100ms])
      ids = publish_incoming(6)
      refused = ids[1]
      _, calls = run_recording_consumer(batch_size: 25) { |call| raise "not here" if call.id == refused } # NAKs it every time
      eventually { calls.distinct_ids.size == 6 } # it has had all six
      # Another worker (a plain client on the same durable) takes the refused one and acks it.
      durable = JetstreamBridge.config.durable_name
      eventually(timeout: 20) do
        NatsApi.fetch_and_ack(bridge_url, stream_name, durable, 1, timeout: 1).any? { |_, body| JSON.parse(body)["event_id"] == refused }
      end
      eventually { consumer_info["num_ack_pending"].zero? && consumer_info["num_pending"].zero? }
      sleep 1.5 # past the refused message's redelivery delay + ack_wait: it is no one's to resume at

      NatsApi.delete_consumer(bridge_url, stream_name, durable)
      later = publish_incoming(2)
      eventually(timeout: 20) { later.all? { |id| calls.ids.include?(id) } }
      wait_all_acked # from where it started, everything is acked: none can come again
      handled_acked = calls.ids.reject { |id| id == refused }
      expect(handled_acked.tally.values.uniq).to eq([1]) # no acked event replayed from the refused one's position
    end
  end
end
