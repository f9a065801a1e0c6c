# frozen_string_literal: true

require_relative "../support/child_ruby"
require_relative "../support/consumer_helpers"
require_relative "../support/active_record_db"

# Several consumer processes from one command (rake jetstream_bridge:consume PROCESSES=n,
# here through spec/fixtures/supervised_consumers.rb, which runs the task's code without
# Rails): real processes, killed for real, the inbox on PostgreSQL.
RSpec.describe JetstreamBridge::Supervisor do
  include ConsumerHelpers

  let(:db) { ActiveRecordDb.postgres }

  before do
    skip "PostgreSQL is not reachable" unless ActiveRecordDb.postgres_available?
    db.activate!.truncate!
    db.migrate_code("create_table(:handled, if_not_exists: true) { |t| t.string :event_id; t.integer :pid; t.integer :deliveries }")
    db.connection.execute("DELETE FROM handled")
    configure_bridge(use_inbox: true, ack_wait: "2s")
    JetstreamBridge.ensure_topology!
  end

  after { @supervisor&.kill } # its whole process group

  def alive?(pid)
    Process.kill(0, pid)
    true
  rescue Errno::ESRCH
    false
  end

  # The fixture (ChildRuby: in a process group of its own), its output lines on `output`.
  def start_supervisor(processes:, handler_sleep: 0)
    env = { "NATS_URL" => bridge_url, "JSB_ENV" => bridge_env, "PG_DATABASE" => db.config[:database], "PROCESSES" => processes.to_s,
            "ACK_WAIT" => "2s", "HANDLER_SLEEP" => handler_sleep.to_s }
    @supervisor = ChildRuby.start(File.join(ChildRuby::ROOT, "spec/fixtures/supervised_consumers.rb"), env: env)
  end

  def output = @supervisor.output

  # The MatchData of the next output line (after those a previous wait_for read) matching `pattern`.
  def wait_for(pattern, timeout: 20) = @supervisor.wait_for(pattern, timeout: timeout)

  def handled = db.connection.select_rows("SELECT event_id, pid FROM handled")

  def worker_pids = output.grep(/worker \d+ started \(pid \d+\)/).map { |l| l[/pid (\d+)/, 1].to_i }

  it "restarts a worker killed mid-stream, and with the inbox every event is handled exactly once" do
    start_supervisor(processes: 3, handler_sleep: 0.02)
    3.times { wait_for(/consuming .* as /) }
    ids = publish_incoming(300)
    eventually(timeout: 20) { handled.size >= 60 }
    victim = wait_for_pid_of(1)
    Process.kill("KILL", victim)
    died = wait_for(/worker 1 died \(signal KILL\) after [\d.]+s; starting it again in 1.0s/)
    expect(died).not_to be_nil
    replacement = wait_for(/worker 1 started \(pid (\d+)\)/)[1].to_i
    expect(replacement).not_to eq(victim)
    # The replacement consumes again (its line may come before the parent's "started" line).
    eventually(timeout: 20) { output.grep(/worker 1 \(pid #{replacement}\): consuming /).any? }

    eventually(timeout: 30) { handled.map(&:first).uniq.size == 300 }
    # Every delivery settled, none waiting: what was in flight in the killed worker came
    # back after ack_wait (2 s) and was acked, so a second handling would be in the rows.
    eventually(timeout: 20) { consumer_info.then { |info| info["num_ack_pending"].zero? && info["num_pending"].zero? } }
    rows = handled
    expect(rows.map(&:first).tally.select { |_, n| n > 1 }).to eq({}) # none twice
    expect(rows.map(&:first)).to match_array(ids)

    @supervisor.signal("TERM")
    status = @supervisor.wait(20)
    expect(status).to be_truthy, "supervisor still running 20s after SIGTERM:\n#{output.join("\n")}"
    expect(status.exitstatus).to eq(0), output.join("\n")
    expect(output).to include("supervisor exited 0")
    expect(worker_pids.select { |pid| alive?(pid) }).to eq([])
  end

  it "leaves no orphan when the parent is killed: the workers drain and exit" do
    start_supervisor(processes: 2)
    # The parent's "consuming" line: the worker's pull loop is up, so its consumer traps
    # TERM (the worker's own line comes before that: a TERM then just ends it).
    2.times { wait_for(/worker \d+ \(pid \d+\) consuming/) }
    pids = worker_pids
    expect(pids.size).to eq(2)
    @supervisor.signal("KILL")
    @supervisor.wait(5, output: false) # its workers live on a while
    eventually(timeout: 10) { pids.none? { |pid| alive?(pid) } }
    @supervisor.read_all(5)
    expect(output.grep(/worker \d+ \(pid \d+\): consumer stopped/).size).to eq(2) # drained, not killed
  end

  def wait_for_pid_of(worker)
    line = output.grep(/worker #{worker} started \(pid \d+\)/).last
    line[/pid (\d+)/, 1].to_i
  end
end
