# frozen_string_literal: true

require "tmpdir"
require_relative "../support/child_ruby"
require_relative "../support/consumer_helpers"

# `rake jetstream_bridge:consume PROCESSES=n` (spec/fixtures/rake_app/Rakefile: the
# gem's tasks without Rails) against the shared real nats-server, with real processes
# killed for real (issue 22, item 9): a worker stuck in a handler stops within
# config.shutdown_timeout once it is told to stop or its parent is gone, giving back what
# it had not started; a worker that fails at every boot ends the command with status 1;
# one that crashes after it started is restarted, as before.
RSpec.describe "rake jetstream_bridge:consume PROCESSES=n, bounded (Supervisor)" do
  include ConsumerHelpers

  let(:root) { File.expand_path("../..", __dir__) }
  let(:out_file) { File.join(Dir.mktmpdir("jb-supervisor-"), "handler.log") }

  before do
    configure_bridge(ack_wait: "30s")
    JetstreamBridge.ensure_topology!
    File.write(out_file, "")
  end

  after { @rake&.kill } # the whole group: the parent and any worker left

  # Running (a zombie whose new parent has not reaped it yet has exited).
  def alive?(pid)
    File.read("/proc/#{pid}/stat").split(") ").last.split.first != "Z"
  rescue Errno::ENOENT, Errno::ESRCH
    false
  end

  # The rake task in a process group of its own; stdout and stderr lines on `output`.
  def start_rake(*args, **env)
    full_env = { "NATS_URL" => bridge_url, "JSB_ENV" => bridge_env, "OUT" => out_file }.merge(env.transform_keys(&:to_s))
    @rake = ChildRuby.start("-S", "rake", "-f", File.join(root, "spec/fixtures/rake_app/Rakefile"), "jetstream_bridge:consume", *args,
                            env: full_env, chdir: root)
  end

  def output = @rake.output

  # The handler's lines of one kind ("start" or "done"), split: [kind, pid, id, deliveries].
  def handler_lines(kind) = File.read(out_file).lines.grep(/\A#{kind} /).map(&:split)

  # The payload ids whose handlers started (and hang).
  def hung_ids = handler_lines("start").map { |line| line[2].to_i }

  # Both workers in a handler, and every message fetched (their batches and prefetch).
  def wait_until_both_hang(messages)
    eventually(timeout: 20) { handler_lines("start").map { |line| line[1] }.uniq.size == 2 }
    eventually(timeout: 10) { consumer_info["num_ack_pending"] == messages }
  end

  def worker_pids = output.grep(/worker \d+ started \(pid \d+\)/).map { |line| line[/pid (\d+)/, 1].to_i }

  def log = output.join("\n")

  # The payload ids a consumer of this process gets, waiting until there are `count`
  # (at most 5 s: what was given back, not what the server redelivers after ack_wait).
  def given_back(count)
    _, calls = run_recording_consumer
    eventually(timeout: 5) { calls.size >= count }
    stop_consumers
    calls.to_a.map { |call| call.event["payload"]["id"] }
  end

  it "a worker stuck in a handler stops within shutdown_timeout of its parent's kill -9, giving back what it had not started" do
    publish_incoming(12) # a worker holds at most 6 (its batch and one prefetched): both get some
    start_rake("HANDLER=HangingHandler", "PROCESSES=2", "BATCH_SIZE=3", SHUTDOWN_TIMEOUT: "2s")
    wait_until_both_hang(12)
    eventually(timeout: 10) { worker_pids.size == 2 } # the parent's lines, written beside the workers'
    pids = worker_pids

    @rake.signal("KILL")
    @rake.wait(5, output: false) # its workers live on a while
    killed_at = monotonic
    waited = eventually(timeout: 20) { pids.none? { |pid| alive?(pid) } && monotonic } - killed_at
    hung = hung_ids
    back = given_back(12 - hung.size)
    puts "parent killed: workers gone after #{waited.round(2)}s (shutdown_timeout 2s); " \
         "#{back.size} of #{12 - hung.size} unstarted messages given back (ack_wait 30s)"
    expect(waited).to be_between(1.5, 5.0)
    expect(back).to match_array((1..12).to_a - hung) # the hung ones wait for ack_wait
    @rake.read_all(5)
    expect(output.grep(/worker \d \(pid \d+\): a handler is still running 2.0s after its parent went away/).size).to eq(2), log
    expect(handler_lines("done")).to eq([])
  end

  it "SIGTERM with handlers stuck (CONCURRENCY=2): the parent exits 1 within shutdown_timeout, the stuck messages left for redelivery" do
    publish_incoming(8)
    start_rake("HANDLER=HangingHandler", "PROCESSES=2", "BATCH_SIZE=2", "CONCURRENCY=2", SHUTDOWN_TIMEOUT: "2s")
    wait_until_both_hang(8)

    started = monotonic
    @rake.signal("TERM")
    status = @rake.wait(15, output: false)
    expect(status).to be_truthy, "still running 15s after SIGTERM:\n#{log}"
    waited = monotonic - started
    @rake.read_all(5)
    hung = hung_ids
    back = given_back(8 - hung.size)
    puts "SIGTERM with stuck handlers: parent exited #{status.exitstatus} after #{waited.round(2)}s (shutdown_timeout 2s); " \
         "#{back.size} of #{8 - hung.size} unstarted messages given back"
    expect(status.exitstatus).to eq(1), log
    expect(waited).to be_between(1.5, 5.0)
    expect(output.grep(/worker \d stopped \(exit 1\)/).size).to eq(2), log
    expect(back).to match_array((1..8).to_a - hung)
  end

  it "a worker that fails at every boot ends the command: status 1 with the error, not restarts forever" do
    start_rake("HANDLER=HangingHandler", "PROCESSES=2", "DURABLE_NAME=bad.name")
    exited = @rake.wait(20)
    deaths = output.grep(/worker \d died/).size
    puts "every boot failing: #{exited ? "exited #{exited.exitstatus} by itself" : 'still running after 20s'}, #{deaths} deaths logged"
    expect(exited).to be_truthy, "still running 20s after start:\n#{log}"
    expect(exited.exitstatus).to eq(1), log
    expect(deaths).to be_between(2, 6), log
    expect(log).to match(/worker \d failed 3 times in a row before it started consuming \(last: exit 1: .*durable_name.*bad\.name.*\); stopping every worker/)
    expect(output.last).to match(/\Ajetstream_bridge: worker \d failed 3 times in a row before it started consuming/)
  end

  it "a worker that crashes after it started consuming is started again, as often as it takes" do
    publish_incoming(1)
    start_rake("HANDLER=CrashingHandler", "PROCESSES=2", CRASHES: "5", ACK_WAIT: "1s", MAX_DELIVER: "6") # one worker crashes 3 times at least
    eventually(timeout: 60) { handler_lines("done").any? }
    crashes = output.grep(/worker \d died \(signal KILL\)/)
    puts "crashing handler: #{crashes.size} worker crashes after a successful start (per worker: " \
         "#{crashes.map { |line| line[/worker (\d)/, 1] }.tally}), then handled"
    expect(crashes.size).to eq(5), log
    expect(log).not_to include("before it started consuming")
    @rake.signal("TERM")
    status = @rake.wait(20)
    expect(status).to be_truthy, log
    expect(status.exitstatus).to eq(0), log
  end
end
