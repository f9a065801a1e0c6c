# frozen_string_literal: true

require_relative "../support/consumer_helpers"
require_relative "../support/consumer_child"

# subscribe(concurrency: N): handlers on N threads, one at a time per key, in stream order,
# against the shared real nats-server (and a consumer process for SIGTERM).
RSpec.describe "Consumer concurrency" do
  include ConsumerHelpers
  ConsumerChild.killed_after_each(self)

  # Handler calls with thread and timing: [key, n, deliveries, thread, started, finished].
  let(:log) { Queue.new }

  def drain(queue) = Array.new(queue.size) { queue.pop }

  # `per_key` events for each of `keys` resources, interleaved in publish order; n counts
  # the events of each key from 0.
  def publish_keyed(keys, per_key)
    events = (0...per_key).flat_map do |n|
      (0...keys).map { |k| { resource_type: "account", event_type: "changed", payload: { id: "acct-#{k}", n: n }, subject: dest_subject } }
    end
    result = JetstreamBridge.publish_batch(events)
    raise "publish failed: #{result.failed.inspect}" unless result.success?
  end

  def recording_handler(delay: -> { 0 }, &fail_when)
    lambda do |event, _subject, deliveries|
      started = monotonic
      sleep delay.call # the scenario: handlers that take a while, so keys overlap
      payload = event["payload"]
      raise IOError, "fails once" if fail_when&.call(payload, deliveries)

      log << [payload["id"], payload["n"], deliveries, Thread.current.name, started, monotonic]
    end
  end

  it "handles each key's events one at a time in stream order, other keys in parallel" do
    configure_bridge(batch_size: 20)
    publish_keyed(10, 20)
    consumer = JetstreamBridge::Consumer.new(recording_handler(delay: -> { rand * 0.01 }), concurrency: 8)
    start_consumer(consumer)
    eventually(timeout: 20) { log.size == 200 }
    calls = drain(log)

    calls.group_by(&:first).each do |key, handled|
      expect(handled.map { |c| c[1] }).to eq((0...20).to_a), "#{key} out of order"
      handled.each_cons(2) { |a, b| expect(b[4]).to be >= a[5], "#{key}: #{b[1]} started before #{a[1]} finished" }
    end
    expect(calls.map { |c| c[3] }.uniq.size).to be > 1
    overlapping = calls.combination(2).count { |a, b| a[0] != b[0] && a[4] < b[5] && b[4] < a[5] }
    expect(overlapping).to be_positive # keys really ran side by side
    eventually { (info = consumer_info)["num_ack_pending"].zero? && info["num_pending"].zero? }
  end

  it "keeps order by partition_by's key instead" do
    configure_bridge(batch_size: 20)
    publish_keyed(6, 10)
    by_parity = ->(event) { event["payload"]["id"].delete_prefix("acct-").to_i.even? ? "even" : "odd" }
    consumer = JetstreamBridge::Consumer.new(recording_handler(delay: -> { rand * 0.005 }), concurrency: 4, partition_by: by_parity)
    start_consumer(consumer)
    eventually(timeout: 20) { log.size == 60 }
    calls = drain(log).sort_by { |c| c[4] }
    calls.group_by { |c| c[0].delete_prefix("acct-").to_i.even? }.each_value do |group|
      group.each_cons(2) { |a, b| expect(b[4]).to be >= a[5] } # one at a time per partition
    end
  end

  # A key stays with the event that took it: a handler that returns after it was stuck past
  # max_handler_time (its key went to the next event) must not free the key of that next
  # event, or a third one runs beside it. Two handler calls of one key may overlap only
  # when the earlier one had run past max_handler_time when the later one started.
  it "keeps one handler per key after a stuck handler returns (several keys, delays around max_handler_time)" do
    configure_bridge(batch_size: 20, ack_wait: "20s", max_handler_time: "1s")
    publish_keyed(3, 5)
    stuck_first = ->(payload, deliveries) { payload["n"].zero? && deliveries == 1 ? 1.3 + (rand * 0.4) : 0.2 + (rand * 0.7) }
    first_deliveries = Queue.new
    handler = lambda do |event, _subject, deliveries|
      started = monotonic
      sleep stuck_first.call(event["payload"], deliveries) # the scenario: around max_handler_time
      log << [event["payload"]["id"], event["payload"]["n"], deliveries, Thread.current.name, started, monotonic]
      first_deliveries << true if deliveries == 1
    end
    start_consumer(JetstreamBridge::Consumer.new(handler, concurrency: 8))
    eventually(timeout: 30) { first_deliveries.size == 15 }
    calls = drain(log)

    calls.group_by(&:first).each do |key, handled|
      handled.sort_by { |c| c[4] }.combination(2).each do |a, b|
        next if b[4] >= a[5] # one after the other

        expect(b[4] - a[4]).to be >= 0.95, "#{key}: n=#{b[1]} started #{(b[4] - a[4]).round(2)}s after n=#{a[1]}, which still ran"
      end
    end
  end

  # partition_by runs on the fetching thread; before, a ScriptError from it ended run! and
  # left the rest of the batch unacked until ack_wait, on every restart.
  it "settles an event whose partition_by raises (even a ScriptError) as a handler failure; the others are handled" do
    configure_bridge(batch_size: 20, ack_wait: "30s", use_dlq: true, max_deliver: 2, backoff: %w[50ms])
    ids = publish_incoming(5)
    by_id = ->(event) { event["payload"]["id"] == 3 ? raise(NotImplementedError, "todo: key for 3") : event["payload"]["id"] }
    consumer, calls = run_recording_consumer(concurrency: 2, partition_by: by_id)
    eventually(timeout: 10) { dlq_messages.size == 1 }

    expect(calls.distinct_ids).to match_array(ids - [ids[2]])
    _subject, body, headers = dlq_messages.first
    expect(JSON.parse(body)["event_id"]).to eq(ids[2])
    expect(headers).to include("X-Error-Class" => "NotImplementedError", "X-Dead-Letter-Reason" => "max_deliver", "X-Deliveries" => "2")
    expect(log_output).to match(/WARN.*handler failed on .* \(delivery 1\/2\).*NotImplementedError: todo: key for 3/)
    eventually { (info = consumer_info)["num_ack_pending"].zero? && info["num_pending"].zero? }
    expect(running_consumers.first.last).to be_alive # run! went on
    expect(consumer_errors).to be_empty
    expect(consumer).not_to be_stopped
  end

  it "does not hold other keys back while one key's event fails and waits for its retry" do
    configure_bridge(batch_size: 20, backoff: %w[2s])
    publish_keyed(5, 4)
    handler = recording_handler { |payload, deliveries| payload["id"] == "acct-0" && payload["n"].zero? && deliveries == 1 }
    started = monotonic
    start_consumer(JetstreamBridge::Consumer.new(handler, concurrency: 4))
    eventually(timeout: 10) { log.size >= 16 }
    others_done = monotonic - started
    eventually(timeout: 10) { log.size == 20 }
    calls = drain(log)
    expect(others_done).to be < 1.5 # the 16 events of the other keys did not wait for the 2 s backoff
    expect(calls.select { |c| c[0] == "acct-0" && c[1].zero? }.map { |c| c[2] }).to eq([2])
  end

  # Before, a worker's reset! waited for its own consumer, which waited for that worker:
  # STOP_TIMEOUT (30 s), then an error.
  it "lets a handler call JetstreamBridge.reset!: it returns at once and run! returns, no handler called after" do
    configure_bridge(ack_wait: "30s")
    publish_incoming(20)
    calls = Queue.new
    reset_took = Queue.new
    handler_threads = Queue.new
    consumer = JetstreamBridge.subscribe(concurrency: 4, batch_size: 10) do |event, *|
      handler_threads << Thread.current
      calls << event["event_id"]
      if calls.size == 1
        started = monotonic
        JetstreamBridge.reset!
        reset_took << monotonic - started
      end
    end
    thread = start_consumer(consumer)
    eventually(timeout: 40) { !reset_took.empty? }
    expect(reset_took.pop).to be < 2
    expect(thread.join(5)).to be_truthy
    handled = calls.size
    # run! has returned; once every thread that ran the handler has ended too, none can call it again.
    Array.new(handler_threads.size) { handler_threads.pop }.uniq.each { |t| expect(t.join(5)).to be_truthy }
    expect(calls.size).to eq(handled)
    expect(log_output).not_to include("still in a handler")
  end

  it "refuses a concurrency that is not a positive Integer" do
    configure_bridge
    expect { JetstreamBridge::Consumer.new(->(*) {}, concurrency: 0) }.to raise_error(ArgumentError, /concurrency must be a positive Integer, got 0/)
    expect { JetstreamBridge.configure(concurrency: "8") }.to raise_error(JetstreamBridge::ConfigurationError, /concurrency must be a positive Integer/)
  end

  it "on SIGTERM with 8 handlers running: each finishes and is acked, the prefetched go back, the process exits 0" do
    configure_bridge(ack_wait: "20s")
    JetstreamBridge.ensure_topology!
    ids = publish_incoming(30)
    child = ConsumerChild.new({ "NATS_URL" => bridge_url, "JSB_ENV" => bridge_env, "HANDLER_SLEEP" => "1.5",
                                "CONCURRENCY" => "8", "ACK_WAIT" => "20s" })
    children << child
    started = Array.new(8) { child.wait_for(/\Astarted /).split[1] } # each printed from inside its handler
    eventually { consumer_info["num_ack_pending"] > 8 } # and it holds more: those go back at TERM
    child.signal("TERM")
    status = child.wait_exit(15)
    expect(status&.exitstatus).to eq(0), "exit #{status.inspect}; stderr:\n#{child.stderr}"
    done = child.output.grep(/\Adone /).map { |line| line.split[1] }
    expect(done).to match_array(started)
    expect(child.output.last).to eq("run returned")

    # Acked: the 22 others come back at once (given back, not left for ack_wait), the 8 never.
    _, calls = run_recording_consumer
    eventually(timeout: 5) { calls.distinct_ids.size == 22 }
    wait_all_acked # all 30 acked: none of the eight can come again
    expect(calls.distinct_ids).to match_array(ids - started)
  end
end
