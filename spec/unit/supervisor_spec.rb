# frozen_string_literal: true

require "tmpdir"

# Supervisor restarts with workers that are plain blocks (no NATS): the supervisor runs
# in a forked child of this process, so its traps and forks stay out of the spec runner.
RSpec.describe JetstreamBridge::Supervisor do
  around do |example|
    Dir.mktmpdir("jb-supervisor-unit-") do |dir|
      @dir = dir
      example.run
    end
  end

  before { configure_bridge }

  def runs = File.exist?(path("runs")) ? File.readlines(path("runs")).size : 0
  def path(name) = File.join(@dir, name)
  def log = File.exist?(path("log")) ? File.read(path("log")) : ""

  # Forks a supervisor of one worker running `work` (given the worker's run count); its pid.
  def supervise(&work)
    runs_file = path("runs")
    fork do
      JetstreamBridge.config.logger = Logger.new(path("log"))
      $stderr.reopen(path("stderr"), "a") # what a failing worker warns
      status = described_class.new(processes: 1) do
        File.open(runs_file, "a") { |f| f.puts(Process.pid) }
        work.call(File.readlines(runs_file).size)
      end.run
      exit!(status)
    end
  end

  def exit_status(pid, timeout: 15)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      _, status = Process.wait2(pid, Process::WNOHANG)
      return status if status

      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        Process.kill("KILL", pid)
        Process.wait(pid)
        raise "supervisor #{pid} still running after #{timeout}s:\n#{log}"
      end
      sleep 0.05
    end
  end

  it "starts a worker that died after it started consuming again, and exits 0 on SIGTERM once the workers stopped" do
    pid = supervise do |run|
      trap("TERM") { exit!(0) } # a consumer drains and exits on TERM
      JetstreamBridge::Consumer::Running.on_start.call # the consumer's pull loop is up
      exit!(3) if run == 1
      sleep
    end
    eventually(timeout: 10) { runs == 2 }
    Process.kill("TERM", pid)
    expect(exit_status(pid).exitstatus).to eq(0)
    expect(log).to match(/worker 0 died \(exit 3\) after [\d.]+s; starting it again in 1.0s/)
  end

  it "gives up after a worker failed BOOT_ATTEMPTS times in a row before it started, with status 1 and the error" do
    pid = supervise { raise JetstreamBridge::ConfigurationError, "durable_name is invalid" }
    expect(exit_status(pid).exitstatus).to eq(1)
    expect(runs).to eq(described_class::BOOT_ATTEMPTS)
    expect(log).to include("worker 0 failed 3 times in a row before it started consuming")
    expect(log).to include("JetstreamBridge::ConfigurationError: durable_name is invalid")
  end
end
