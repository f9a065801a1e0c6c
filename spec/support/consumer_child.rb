# frozen_string_literal: true

require "rbconfig"
require "tmpdir"
require "timeout"

# A consumer in its own Ruby process: spec/fixtures/consumer_process.rb run with
# `ruby -I lib`; its stdout lines arrive on `lines` (and are kept in `output`).
class ConsumerChild
  ROOT = File.expand_path("../..", __dir__)
  FIXTURE = File.join(ROOT, "spec", "fixtures", "consumer_process.rb")

  attr_reader :pid, :lines, :output, :stderr_path

  def initialize(env)
    @lines = Queue.new
    @output = []
    @stderr_path = File.join(Dir.mktmpdir("consumer-child-"), "stderr.log")
    rd, wr = IO.pipe
    @pid = Process.spawn(env, RbConfig.ruby, "-I", File.join(ROOT, "lib"), FIXTURE,
                         chdir: ROOT, in: File::NULL, out: wr, err: @stderr_path)
    wr.close
    @reader = Thread.new do
      rd.each_line do |line|
        @output << line.chomp
        @lines << line.chomp
      end
    ensure
      rd.close
    end
  end

  # Waits for a stdout line matching `pattern`; returns it.
  def wait_for(pattern, timeout: 15)
    Timeout.timeout(timeout) do
      loop do
        line = @lines.pop
        return line if line.match?(pattern)
      end
    end
  rescue Timeout::Error
    raise "child never printed #{pattern.inspect} within #{timeout}s; stdout: #{@output.inspect}\nstderr:\n#{stderr}"
  end

  def signal(name)
    Process.kill(name, pid)
  end

  # Exit status, or nil if still running after `timeout` seconds.
  def wait_exit(timeout)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      _, status = Process.wait2(pid, Process::WNOHANG)
      if status
        @reader.join(2)
        return status
      end
      return nil if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.02
    end
  end

  def stderr
    File.exist?(stderr_path) ? File.read(stderr_path) : ""
  end

  def kill!
    Process.kill("KILL", pid)
    Process.wait(pid)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end
end
