# frozen_string_literal: true

require_relative "settler_double"

module PoolSpec
  # What the Pool asks of its consumer: the stop flag.
  Owner = Struct.new(:native, :stopped) do
    def stopped? = stopped

    def stop!
      self.stopped = true
      native.request_stop
    end
  end

  # A middleware with batch hooks, as the inbox has: records each unit it runs, and
  # whether any of the unit's messages was acked before the hook returned.
  class BatchRecorder
    def initialize(log, native, limit, fail_units = false) # rubocop:disable Style/OptionalBooleanParameter -- Middleware#use passes no keywords
      @log = log
      @native = native
      @limit = limit
      @fail_units = fail_units
    end

    def batches? = true
    def batch_limit = @limit

    def around_batch(contexts)
      yield
      ids = contexts.map(&:stream_seq) # SettlerDouble gives each message its id as stream_seq
      early = @native.settled.any? { |kind, id, _| kind == :ack && ids.include?(id) }
      @log << { ids: ids, thread: Thread.current, acked_inside: early }
      raise IOError, "commit failed" if @fail_units
    end

    def call(_event, _context) = yield
  end
end

# The consume loop (Pool) through the settler seam: per-key order at every concurrency,
# and units of batch hooks (the inbox's transaction) acked only once they complete.
RSpec.describe JetstreamBridge::Consumer::Pool do
  let(:native) { SettlerDouble.new }
  let(:owner) { PoolSpec::Owner.new(native, false) }

  before { configure_bridge(backoff: %w[1s]) }

  def events(count, keys:)
    Array.new(count) do |i|
      event = { "event_id" => "e-#{i}", "event_type" => "user.created", "schema_version" => 1,
                "resource_type" => "user", "resource_id" => (i % keys).to_s, "payload" => { "n" => i } }
      SettlerDouble.message(i + 1, event)
    end
  end

  # Runs a Pool over `messages` until each is settled; the handler calls.
  def run_pool(messages, concurrency:, middleware: nil, batch_size: 20, &handler)
    settings = JetstreamBridge::Consumer::Settings.from(JetstreamBridge.config, middleware)
    processor = JetstreamBridge::Consumer::Processor.new(handler, settings, native, "durable")
    pool = described_class.new(owner, native, processor, concurrency: concurrency, batch_size: batch_size, partition_by: nil,
                                                         max_handler_time: 60)
    native.push(*messages)
    runner = Thread.new { pool.run }
    eventually(timeout: 20) { native.outcomes.size == messages.size }
    owner.stop!
    expect(runner.join(10)).to be_truthy
  end

  [1, 4].each do |concurrency|
    it "handles the events of one key one at a time, in order, at concurrency #{concurrency}" do
      handled = Queue.new
      running = Hash.new(0)
      overlaps = []
      lock = Mutex.new
      run_pool(events(45, keys: 3), concurrency: concurrency) do |event, _subject, _deliveries|
        key = event["resource_id"]
        lock.synchronize { overlaps << key if (running[key] += 1) > 1 }
        sleep rand * 0.004
        lock.synchronize { running[key] -= 1 }
        handled << [key, event["payload"]["n"]]
      end
      order = Array.new(handled.size) { handled.pop }.group_by(&:first).transform_values { |pairs| pairs.map(&:last) }
      expect(order.values.map(&:size)).to eq([15, 15, 15])
      order.each_value { |ns| expect(ns).to eq(ns.sort) }
      expect(overlaps).to be_empty
      expect(native.outcomes.values.map(&:first).uniq).to eq([:ack])
    end
  end

  it "with batch hooks at concurrency 1 runs the fetched batch in units of batch_limit on run!'s thread, acked after each" do
    log = []
    middleware = JetstreamBridge::Middleware.new.use(PoolSpec::BatchRecorder, log, native, 5)
    run_pool(events(12, keys: 12), concurrency: 1, batch_size: 12, middleware: middleware) { |*| nil }
    expect(log.map { |unit| unit[:ids].size }).to eq([5, 5, 2])
    expect(log.map { |unit| unit[:acked_inside] }.uniq).to eq([false])
    expect(native.outcomes.values.map(&:first).uniq).to eq([:ack])
  end

  it "with batch hooks at concurrency 3 gives each worker a share of the batch, one unit per thread" do
    log = []
    middleware = JetstreamBridge::Middleware.new.use(PoolSpec::BatchRecorder, log, native, 50)
    run_pool(events(30, keys: 30), concurrency: 3, batch_size: 30, middleware: middleware) { |*| sleep 0.002 }
    expect(log.map { |unit| unit[:ids].size }.sum).to eq(30)
    expect(log.size).to be < 30 # not a unit per event
    expect(log.map { |unit| unit[:thread] }.uniq.size).to be > 1
    expect(log.map { |unit| unit[:acked_inside] }.uniq).to eq([false])
  end

  it "gives every message of a unit whose hook failed back after the backoff" do
    log = []
    middleware = JetstreamBridge::Middleware.new.use(PoolSpec::BatchRecorder, log, native, 50, true)
    run_pool(events(6, keys: 6), concurrency: 2, batch_size: 6, middleware: middleware) { |*| nil }
    expect(native.outcomes.values.uniq).to eq([[:nak, 1000]])
  end
end
