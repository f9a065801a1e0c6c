# frozen_string_literal: true

require_relative "../support/consumer_helpers"
require_relative "../support/tcp_proxy"

# The consumer against a dedicated nats-server that is stopped and started again (same
# port, same store dir) while messages are being handled: nothing is lost.
RSpec.describe "JetstreamBridge consumer across server restarts" do
  include ConsumerHelpers

  after { stop_consumers }

  include_context "with its own nats-server"

  def handle_all_across(restart)
    configure_bridge(server: @server, ack_wait: "3s", max_deliver: 20, backoff: %w[100ms], batch_size: 20)
    ids = publish_incoming(300)
    _, calls = run_recording_consumer { |_| sleep 0.004 } # the scenario: the server goes away mid-stream

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
      sleep 1 # the outage
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
      sleep 0.5 # the outage
      @server.start
    end)
  end

  # Takes `count` messages from the durable as another worker would, and never acks them.
  def hold_messages(count)
    NatsApi.with_conn(bridge_url, 5) do |conn|
      inbox = "_INBOX.held.#{rand(1 << 40)}"
      conn.subscribe(inbox)
      conn.publish("$JS.API.CONSUMER.MSG.NEXT.#{stream_name}.#{JetstreamBridge.config.durable_name}",
                   JSON.generate(batch: count, expires: 2_000_000_000), reply: inbox)
      Array.new(count) { conn.next_message }
    end
  end

  # Counts the stream lookups (STREAM.MSG.GET requests) made while the block runs, as a
  # subscriber to their subjects sees them. The block is given a lambda that counts the
  # pull requests (CONSUMER.MSG.NEXT) seen so far: the spy sees one connection's requests
  # in the order it sent them.
  def count_stream_lookups
    spy = NatsApi::Conn.new(@server.url, 0.2)
    spy.subscribe("$JS.API.STREAM.MSG.GET.>")
    spy.subscribe("$JS.API.CONSUMER.MSG.NEXT.>")
    spy.ping
    count = 0
    pulls = 0
    done = false
    reader = Thread.new do
      until done
        begin
          message = spy.next_message
          next unless message

          message[:subject].start_with?("$JS.API.CONSUMER.MSG.NEXT.") ? pulls += 1 : count += 1
        rescue NatsApi::Error
          nil # no message within 0.2 s
        end
      end
    end
    yield -> { pulls }
    done = true
    reader.join
    count
  ensure
    spy&.close
  end

  # Looking for unreadable messages costs a stream lookup per message another worker
  # holds: it is done only after the client failed to parse a delivery (bad_input_spec).
  it "does not search the stream for unreadable messages after a plain disconnect, and reads what a pull request made before it gets" do
    proxy = TcpProxy.new(@server.port)
    configure_bridge(server: proxy.url, ack_wait: "60s")
    run_recording_consumer
    eventually { consumer_info } # the durable exists
    stop_consumers
    publish_incoming(200)
    expect(hold_messages(200).compact.size).to eq(200)
    _, calls = run_recording_consumer
    eventually { consumer_info["num_waiting"].positive? } # pulling
    lookups = count_stream_lookups do |pulls|
      proxy.cut(half_open: true)
      later = publish_incoming(1)
      # Not after ack_wait: the server, which still thinks the old connection alive,
      # serves a pull request made through it; the consumer's inbox, subscribed again
      # on the new connection, gets that message too.
      eventually(timeout: 20) { calls.ids == later }
      # The pull loop logs the failed pull, then searches (if at all), then pulls again:
      # once a pull request made after the log line is seen, a search's lookups would have been.
      eventually(timeout: 20) { JetstreamBridge::Connection.drain_events; log_output.match?(/pull from .* failed/) }
      before = pulls.call
      eventually(timeout: 10) { pulls.call > before }
    end
    expect(log_output).to match(/pull from .* failed/) # the pull was cut short
    expect(consumer_info["num_ack_pending"]).to eq(200) # still held by the other worker
    expect(lookups).to eq(0) # a search would look up each message the other worker holds
  ensure
    stop_consumers # while the proxy still carries their connection
    proxy&.close
  end

  # Binding the durable, flushing settlements and draining pull requests each wait on
  # the server (request_timeout, 5 s, 2 s): none of them may hold up a stop.
  it "stops at once while NATS is unreachable" do
    proxy = TcpProxy.new(@server.port)
    configure_bridge(server: proxy.url)
    consumer, = run_recording_consumer
    _, thread = running_consumers.last
    eventually { consumer_info&.fetch("num_waiting").to_i.positive? } # pulling
    proxy.close
    eventually { !JetstreamBridge.connected? }
    sleep 0.5 # the scenario: stop! while binding again, with no server to answer
    started = monotonic
    consumer.stop!
    expect(thread.join(10)).to be_truthy
    expect(monotonic - started).to be < 0.5
  ensure
    proxy&.close
  end

  it "starts consuming once a server that was down at boot comes up (subscribe(run: true)), and stops while waiting" do
    @server.stop
    configure_bridge(server: @server, connect_timeout: "500ms", request_timeout: "1s")
    calls = ConsumerHelpers::Calls.new
    thread = JetstreamBridge.subscribe(run: true) { |event, subject, deliveries| calls.record(event, subject, deliveries) }
    thread.report_on_exception = false
    eventually { log_output.scan(/WARN.*cannot reach NATS.*retrying in/).size >= 2 } # a few failed attempts
    expect(thread).to be_alive
    @server.start
    ids = eventually(timeout: 20) { publish_incoming(3) rescue nil } # rubocop:disable Style/RescueModifier
    eventually(timeout: 20) { calls.size == 3 }
    expect(calls.ids).to eq(ids)

    @server.stop
    waiting = JetstreamBridge::Consumer.new { |*| nil }
    warnings = log_output.scan(/cannot reach NATS/).size
    waiter = Thread.new { waiting.run! }
    eventually { log_output.scan(/cannot reach NATS/).size > warnings } # its first attempt timed out (request_timeout 1s)
    sleep 0.7 # the scenario: stop! during its second attempt (after a 0.5 s pause), a request no server answers
    started = monotonic
    waiting.stop!
    expect(waiter.join(5)).to be_truthy # returns without ever reaching the server
    expect(monotonic - started).to be < 2
  ensure
    JetstreamBridge.reset!
    thread&.join(5)
  end
end
