# frozen_string_literal: true

require "open3"
require "rbconfig"

# A Ruby child process with this repository's lib on its load path (`ruby -I lib ...`),
# in a process group of its own (so that a hung child and anything it forked can be
# killed together), run from the repository root unless told otherwise.
#
#   out, status = ChildRuby.capture("-e", code, "arg")               # stdout and stderr together
#   out, err, status = ChildRuby.capture3("-e", code, stdin_data: s)  # apart
#   child = ChildRuby.start("spec/fixtures/x.rb", env: { "K" => "v" }) # running, lines on child.output
#   child.wait_for(/ready/)  # => MatchData of the next line matching (after those already waited for)
#   child.signal("TERM"); child.wait(10)  # => Process::Status, nil while still running
#   child.kill                            # KILL to its whole group (after each example that starts one)
#   ChildRuby.popen3("-e", code) { |stdin, stdout, stderr, wait| ... }  # to talk to it
#
# Arguments are Ruby's: a script path, or "-e", code; or "-S", "rake", ... for a command.
# A capture that outlives `timeout` is killed, with its group, and raises ChildRuby::Hung
# with what it printed.
module ChildRuby
  ROOT = File.expand_path("../..", __dir__)
  LIB = File.join(ROOT, "lib")
  TIMEOUT = 120

  class Hung < StandardError; end

  module_function

  def command(*args) = [RbConfig.ruby, "-I", LIB, *args]

  # Runs to its end: [stdout and stderr interleaved, Process::Status].
  def capture(*args, env: {}, chdir: ROOT, stdin_data: nil, timeout: TIMEOUT)
    Open3.popen2e(env, *command(*args), chdir: chdir, pgroup: true) do |stdin, out, wait|
      readers = [Thread.new { out.read }]
      output, = finish(wait, stdin, stdin_data, readers, timeout)
      [output, wait.value]
    end
  end

  # Runs to its end: [stdout, stderr, Process::Status].
  def capture3(*args, env: {}, chdir: ROOT, stdin_data: nil, timeout: TIMEOUT)
    Open3.popen3(env, *command(*args), chdir: chdir, pgroup: true) do |stdin, out, err, wait|
      readers = [Thread.new { out.read }, Thread.new { err.read }]
      output, errors = finish(wait, stdin, stdin_data, readers, timeout)
      [output, errors, wait.value]
    end
  end

  # Started, talked to: yields stdin, stdout, stderr and the wait thread (Open3.popen3).
  def popen3(*args, env: {}, chdir: ROOT, &block)
    Open3.popen3(env, *command(*args), chdir: chdir, pgroup: true, &block)
  end

  # Starts it and returns at once: a Running. `err:` :merge (stderr lines on output too) or
  # a file path for stderr.
  def start(*args, env: {}, chdir: ROOT, err: :merge)
    Running.new(command(*args), env: env, chdir: chdir, err: err)
  end

  def finish(wait, stdin, stdin_data, readers, timeout)
    writer = Thread.new do
      stdin.write(stdin_data) if stdin_data
    rescue Errno::EPIPE
      nil # it stopped reading: its status says why
    ensure
      stdin.close
    end
    unless wait.join(timeout)
      kill_group(wait.pid)
      raise Hung, "the child hung (killed after #{timeout}s); it printed:\n#{readers.map(&:value).join}"
    end
    writer.join
    readers.map(&:value)
  end

  def kill_group(pid)
    Process.kill("KILL", -pid)
  rescue Errno::ESRCH, Errno::EPERM
    nil
  end

  # A started child: its output lines as they come, its exit as it happens (reaped by a
  # thread of its own: nothing else may wait for the pid).
  class Running
    attr_reader :pid, :output

    def initialize(argv, env:, chdir:, err:)
      rd, wr = IO.pipe
      @pid = Process.spawn(env, *argv, chdir: chdir, pgroup: true, in: File::NULL, out: wr,
                                       err: err == :merge ? wr : err)
      wr.close
      @waiter = Process.detach(@pid)
      @output = []
      @read = 0
      @lock = Mutex.new
      @changed = ConditionVariable.new
      @reader = Thread.new do
        rd.each_line { |line| @lock.synchronize { @output << line.chomp; @changed.broadcast } }
      ensure
        rd.close
        @lock.synchronize { @eof = true; @changed.broadcast }
      end
    end

    # The next line (after those earlier waits returned) matching `pattern`: its MatchData.
    # Fails with the output so far after `timeout` seconds, or once the output has ended.
    def wait_for(pattern, timeout: 20)
      deadline = now + timeout
      @lock.synchronize do
        loop do
          while @read < @output.size
            line = @output[@read]
            @read += 1
            match = line.match(pattern)
            return match if match
          end
          left = deadline - now
          raise "the child printed no line matching #{pattern.inspect} #{@eof ? 'before its output ended' : "within #{timeout}s"}:\n#{@output.join("\n")}" if @eof || left <= 0

          @changed.wait(@lock, left)
        end
      end
    end

    # Its Process::Status once it has exited, or nil when still running after `timeout`
    # seconds. With output: true, also waits (up to 5 s) for the end of its output, which
    # children it left running may hold open.
    def wait(timeout, output: true)
      return nil unless @waiter.join(timeout)

      read_all(5) if output
      @waiter.value
    end

    # Waits up to `timeout` seconds for the end of its output (every holder closed it).
    def read_all(timeout) = @reader.join(timeout)

    def status = wait(0, output: false)
    def exited? = !@waiter.alive?
    def log = @lock.synchronize { @output.join("\n") }

    def signal(name)
      Process.kill(name, pid)
    end

    # KILL to its whole group (it and what it forked); waits for it.
    def kill
      ChildRuby.kill_group(pid)
      wait(10)
    end

    private

    def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
