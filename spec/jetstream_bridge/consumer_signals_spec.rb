# frozen_string_literal: true

require "timeout"
require_relative "../support/consumer_helpers"
require_relative "../support/consumer_child"

# A consumer in its own Ruby process (spec/fixtures/consumer_process.rb) stopped by
# SIGTERM/SIGINT: the message in hand is finished and acked, the process exits 0 in
# bounded time, and a TERM handler the application had installed is still called.
RSpec.describe "JetstreamBridge consumer process signals" do
  include ConsumerHelpers
  ConsumerChild.killed_after_each(self)

  def spawn_child(**extra)
    env = { "NATS_URL" => bridge_url, "JSB_ENV" => bridge_env }
    extra.each { |k, v| env[k.to_s.upcase] = v.to_s }
    ConsumerChild.new(env).tap { |c| children << c }
  end

  it "on SIGTERM mid-handler finishes and acks that message, calls the app's TERM handler and exits 0" do
    configure_bridge(ack_wait: "2s")
    JetstreamBridge.ensure_topology!
    in_flight, *others = publish_incoming(3)
    chain_file = File.join(Dir.mktmpdir("chain-"), "term")
    child = spawn_child(ack_wait: "2s", handler_sleep: 1.5, chain_file: chain_file)

    expect(child.wait_for(/\Astarted /)).to eq("started #{in_flight} 1") # in the handler (it sleeps 1.5 s)
    signalled = monotonic
    child.signal("TERM")
    status = child.wait_exit(10)
    expect(status).not_to be_nil, "consumer process still running 10s after SIGTERM; stderr:\n#{child.stderr}"
    expect(monotonic - signalled).to be < 6
    expect(status.exitstatus).to eq(0), "exit #{status.inspect}; stderr:\n#{child.stderr}"
    expect(child.output).to eq(["ready", "started #{in_flight} 1", "done #{in_flight}", "run returned"])
    expect(File.exist?(chain_file) && File.read(chain_file)).to eq("TERM #{Signal.list['TERM']}")

    # Acked: another consumer on the same durable gets the others, never the in-flight one,
    # even after ack_wait has passed; the two returned ones come back at once.
    started = monotonic
    _, calls = run_recording_consumer
    eventually(timeout: 5) { others.all? { |id| calls.for(id).any? } }
    expect(monotonic - started).to be < 1.9 # returned at stop, not after ack_wait
    # Nothing left unacked: had the in-flight one not been acked, it would be pending
    # until ack_wait, then redelivered (here) and acked only then.
    eventually { consumer_info.then { |info| info["num_ack_pending"].zero? && info.dig("ack_floor", "stream_seq") == 3 } }
    expect(calls.ids).not_to include(in_flight)
    expect(calls.ids.sort).to eq(others.sort),
                              "parent consumer handled #{calls.to_a.map { |c| [others.index(c.id), c.deliveries] }.inspect} " \
                              "([index in others, deliveries]); expected each of the 2 returned messages once"
    expect(consumer_info["num_ack_pending"]).to eq(0)
  end

  %w[TERM INT].each do |signal|
    it "on SIG#{signal} while waiting for messages exits 0 promptly" do
      configure_bridge
      JetstreamBridge.ensure_topology!
      child = spawn_child
      child.wait_for(/\Aready\z/)
      eventually(timeout: 10) { consumer_info&.fetch("num_waiting").to_i.positive? } # blocked in the core, its pull request waiting
      signalled = monotonic
      child.signal(signal)
      status = child.wait_exit(10)
      expect(status).not_to be_nil, "consumer process still running 10s after SIG#{signal}; stderr:\n#{child.stderr}"
      expect(monotonic - signalled).to be < 3
      expect(status.exitstatus).to eq(0), "exit #{status.inspect}; stderr:\n#{child.stderr}"
      expect(child.output.last).to eq("run returned")
    end
  end
end
