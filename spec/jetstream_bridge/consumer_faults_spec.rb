# frozen_string_literal: true

require_relative "../support/consumer_helpers"

# The consumer against a dedicated nats-server that is stopped and started again (same
# port, same store dir) while messages are being handled: nothing is lost.
RSpec.describe "JetstreamBridge consumer across server restarts" do
  include ConsumerHelpers

  after { stop_consumers }

  around do |example|
    @server = NatsServer.new.start
    example.run
  ensure
    JetstreamBridge.reset!
    @server.cleanup
  end

  def handle_all_across(restart)
    configure_bridge(server: @server, ack_wait: "3s", max_deliver: 20, backoff: %w[100ms], batch_size: 20)
    ids = publish_incoming(300)
    _, calls = run_recording_consumer { |_| sleep 0.004 }

    eventually(timeout: 15) { calls.size >= 60 }
    expect(calls.distinct_ids.size).to be < 300 # the server goes away mid-stream
    restart.call
    eventually(timeout: 30, interval: 0.2) { calls.distinct_ids.size == 300 }
    expect(calls.distinct_ids.sort).to eq(ids.sort)
    expect(consumer_errors).to be_empty
    calls
  end

  it "handles every event when the server is stopped and started again mid-stream" do
    calls = handle_all_across(lambda do
      @server.stop
      sleep 1
      @server.start
    end)
    # Acks sent while the server was away may be lost: redelivery is allowed, loss is not.
    expect(calls.size).to be >= 300
    eventually(timeout: 15) { consumer_info["num_ack_pending"].zero? }
    expect(consumer_info.dig("ack_floor", "stream_seq")).to eq(300)
  end

  it "handles every event when the server is killed (SIGKILL) and restarted mid-stream" do
    handle_all_across(lambda do
      @server.kill
      sleep 0.5
      @server.start
    end)
  end

  it "starts consuming once a server that was down at boot comes up (subscribe(run: true)), and stops while waiting" do
    @server.stop
    configure_bridge(server: @server, connect_timeout: "500ms", request_timeout: "1s")
    calls = ConsumerHelpers::Calls.new
    thread = JetstreamBridge.subscribe(run: true) { |event, subject, deliveries| calls.record(event, subject, deliveries) }
    thread.report_on_exception = false
    sleep 2 # a few failed attempts
    expect(thread).to be_alive
    expect(log_output).to match(/WARN.*cannot reach NATS.*retrying in/)
    @server.start
    ids = eventually(timeout: 20) { publish_incoming(3) rescue nil } # rubocop:disable Style/RescueModifier
    eventually(timeout: 20) { calls.size == 3 }
    expect(calls.ids).to eq(ids)

    @server.stop
    waiting = JetstreamBridge::Consumer.new { |*| nil }
    waiter = Thread.new { waiting.run! }
    sleep 1.5
    started = monotonic
    waiting.stop!
    expect(waiter.join(5)).to be_truthy # returns without ever reaching the server
    expect(monotonic - started).to be < 2
  ensure
    JetstreamBridge.reset!
    thread&.join(5)
  end
end
