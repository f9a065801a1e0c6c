# frozen_string_literal: true

require "json"

module JetstreamBridge
  # Several worker processes from one command (rake jetstream_bridge:consume PROCESSES=4):
  # the app is booted once, then forked; each worker runs the block (a consumer) on its
  # own connection (the fork rules: a child never uses the parent's connection).
  #
  # - A worker that dies is started again after a pause that doubles with each quick
  #   death (RESTART_PAUSE up to MAX_RESTART_PAUSE; back to the start once a worker has
  #   lived STABLE_AFTER), and the death is logged.
  # - A worker that dies BOOT_ATTEMPTS times in a row before its consumer started (a bad
  #   DURABLE_NAME, refused credentials: every boot fails alike) is not started again: the
  #   parent stops the others and run returns 1, `error` saying why. NATS being
  #   unreachable is no boot failure: the worker's consumer waits it out.
  # - SIGTERM/SIGINT to the parent are sent on to every worker: each drains (finishes the
  #   handler in flight, gives its prefetched messages back) and exits; the parent exits 0
  #   once all have (1 if a worker failed to stop cleanly).
  # - No orphans: each worker holds the read end of a pipe whose write end only the parent
  #   holds. When the parent dies, even by SIGKILL, the pipe reads EOF and the worker stops
  #   itself as on SIGTERM.
  # - Bounded stops: a worker whose handler still runs config.shutdown_timeout after its
  #   consumer was told to stop gives back the messages whose handlers have not started
  #   and exits 1 (the server delivers the hung handler's message again after ack_wait).
  #
  # Workers report to the parent on a second pipe, one line each: "started <pid>" once
  # their consumer's pull loop is up, "failed <pid> <error as JSON>" before they exit.
  class Supervisor
    RESTART_PAUSE = 1.0
    MAX_RESTART_PAUSE = 30.0
    # Seconds a worker must live for its next death to count as a first one.
    STABLE_AFTER = 60.0
    # Deaths in a row before the consumer started, after which the parent gives up.
    BOOT_ATTEMPTS = 3
    # How often the parent checks for dead workers and due restarts.
    POLL = 0.1
    # Characters of an error a worker reports: its line stays under PIPE_BUF (4096 bytes),
    # so one write is atomic and lines from several workers never interleave.
    ERROR_LIMIT = 500
    # Bounds (seconds) on the last steps of a worker whose handler hangs (see abandon).
    LOG_BOUND = 2
    GIVE_BACK_BOUND = 10

    Slot = Struct.new(:index, :pid, :started_at, :pause, :restart_at, :started, :boot_failures, :last_error)

    # Why run gave up (a worker that never started), or nil.
    attr_reader :error

    def initialize(processes:, &work)
      raise ArgumentError, "processes must be a positive Integer, got #{processes.inspect}" unless processes.is_a?(Integer) && processes.positive?
      raise ArgumentError, "Supervisor needs a block to run in each worker" unless work

      @slots = Array.new(processes) { |i| Slot.new(i, nil, nil, RESTART_PAUSE, nil, false, 0, nil) }
      @work = work
      @stopping = false
      @failed = false
      @error = nil
    end

    # Runs until every worker has stopped after SIGTERM/SIGINT (or after a worker failed
    # at every boot); returns the exit status.
    def run
      @shutdown_timeout = JetstreamBridge.config.shutdown_timeout_ms / 1000.0
      @life_reader, @life_writer = IO.pipe
      @status_reader, @status_writer = IO.pipe
      @status_buffer = +""
      previous = %w[TERM INT].to_h { |signal| [signal, trap(signal) { stop!(signal) }] }
      release_shared_connections
      @slots.each { |slot| start(slot) }
      supervise
      @failed ? 1 : 0
    ensure
      previous&.each { |signal, handler| trap(signal, handler || "DEFAULT") }
      [@life_writer, @life_reader, @status_writer, @status_reader].each { |io| io&.close }
    end

    private

    # Called from a trap too: only flags and signals (no Mutex, no logger).
    def stop!(signal)
      @stopping = true
      @slots.each do |slot|
        Process.kill(signal, slot.pid) if slot.pid
      rescue Errno::ESRCH
        nil
      end
    end

    def supervise
      loop do
        read_status
        reap
        break if @stopping && @slots.none?(&:pid)

        restart_due unless @stopping
        sleep POLL
      end
    end

    def reap
      while (pid, status = Process.wait2(-1, Process::WNOHANG))
        read_status # what the worker wrote before it died
        slot = @slots.find { |s| s.pid == pid } or next
        slot.pid = nil
        @stopping ? stopped(slot, status) : died(slot, status)
      end
    rescue Errno::ECHILD
      nil
    end

    # The lines the workers wrote on the status pipe (see report).
    def read_status
      while (chunk = @status_reader.read_nonblock(65_536, exception: false)).is_a?(String)
        @status_buffer << chunk
      end
      while (line = @status_buffer.slice!(/\A.*\n/))
        kind, pid, error = line.chomp.split(" ", 3)
        slot = @slots.find { |s| s.pid == pid.to_i } or next
        kind == "started" ? consuming(slot) : slot.last_error = JSON.parse(error)
      end
    end

    # The worker's pull loop is up: from now on SIGTERM drains it (before, it just ends it).
    def consuming(slot)
      slot.started = true
      log("info", "worker_consuming", "worker #{slot.index} (pid #{slot.pid}) consuming")
    end

    def stopped(slot, status)
      @failed ||= !status.success?
      log("info", "worker_stopped", "worker #{slot.index} stopped (#{describe(status)})")
    end

    def died(slot, status)
      lived = Background.monotonic - slot.started_at
      cause = [describe(status), slot.last_error].compact.join(": ")
      slot.boot_failures = slot.started ? 0 : slot.boot_failures + 1
      return give_up(slot, cause) if slot.boot_failures >= BOOT_ATTEMPTS

      slot.pause = RESTART_PAUSE if lived >= STABLE_AFTER
      slot.restart_at = Background.monotonic + slot.pause
      log("error", "worker_died", "worker #{slot.index} died (#{cause}) after #{lived.round(1)}s" \
                                  "#{' before it started consuming' unless slot.started}; starting it again in #{slot.pause}s")
      slot.pause = [slot.pause * 2, MAX_RESTART_PAUSE].min
    end

    # A worker that can never start (the same failure at every boot): restarting it
    # forever would hide a deployment error behind a process that looks alive.
    def give_up(slot, cause)
      @failed = true
      @error = "worker #{slot.index} failed #{slot.boot_failures} times in a row before it started consuming " \
               "(last: #{cause}); stopping every worker"
      log("error", "worker_never_started", @error)
      stop!("TERM")
    end

    def restart_due
      @slots.each do |slot|
        next if slot.pid || slot.restart_at.nil? || Background.monotonic < slot.restart_at

        slot.restart_at = nil
        start(slot)
      end
    end

    def start(slot)
      slot.started_at = Background.monotonic
      slot.started = false
      slot.last_error = nil
      slot.pid = fork { run_worker(slot.index) }
      log("info", "worker_started", "worker #{slot.index} started (pid #{slot.pid})")
    end

    # In the child: the parent's traps are not ours (until the consumer traps TERM/INT,
    # they end the worker at once); the consumer's start and stop are followed.
    def run_worker(index)
      %w[TERM INT].each { |signal| trap(signal, "DEFAULT") }
      @life_writer.close
      @status_reader.close
      Consumer::Running.on_start = -> { report("started") }
      Consumer::Running.on_stop = -> { start_shutdown_clock(index) }
      watch_parent
      @work.call(index)
      # exit! skips the at_exit hooks inherited from the parent (its test runner, say);
      # what the worker printed must still get out.
      flush_output
      exit!(0)
    rescue Exception => e # rubocop:disable Lint/RescueException -- a worker reports why it ended, then exits
      exit_status = e.is_a?(SystemExit) ? e.status : 1
      why = e.is_a?(SystemExit) ? e.message : "#{e.class}: #{Native.redact(e.message.to_s)}"
      warn("[JetstreamBridge] worker #{index} failed: #{why}") unless e.is_a?(SystemExit)
      report("failed", why) unless exit_status.zero?
      flush_output
      exit!(exit_status)
    end

    # A thread that reads the pipe only the parent writes to: EOF means the parent is gone,
    # and the worker stops itself as on SIGTERM (the consumer's trap drains it).
    def watch_parent
      reader = @life_reader
      Background.thread("parent-watch", report: true) do
        reader.read # returns at EOF: the parent exited or was killed
        @parent_gone = true
        Process.kill("TERM", Process.pid)
      end
    end

    # Called by every Consumer#stop! in the worker, mostly from its trap: no Mutex, no
    # logger there (a new thread is allowed). A handler that hangs must not keep a
    # stopping worker alive forever, an orphan after its parent's death least of all.
    def start_shutdown_clock(index)
      @shutdown_clock ||= Background.thread("shutdown-clock", report: true) do
        sleep @shutdown_timeout
        abandon(index)
      end
    end

    # The worker is still there shutdown_timeout after its consumer was told to stop: a
    # handler hangs. Gives back the messages whose handlers have not started and exits;
    # the hung handler's message is the server's to deliver again after ack_wait.
    def abandon(index)
      why = @parent_gone ? "its parent went away" : "it was told to stop"
      # On threads of their own, bounded: the hung handler may hold the logger's lock, and
      # giving back waits on the connection.
      bounded(LOG_BOUND) do
        log("error", "worker_shutdown_timeout",
            "worker #{index} (pid #{Process.pid}): a handler is still running #{@shutdown_timeout}s after #{why} " \
            "(config.shutdown_timeout); giving back the messages not started and exiting (the server delivers " \
            "the one in the handler again after ack_wait)")
      end
      bounded(GIVE_BACK_BOUND) { Consumer::Running.give_back_unstarted! }
      flush_output
      exit!(1)
    end

    def bounded(seconds, &block)
      Background.thread("bounded", &block).join(seconds)
    end

    # One line on the status pipe (see ERROR_LIMIT); nothing when the parent is gone.
    def report(kind, error = nil)
      line = [kind, Process.pid, (JSON.generate(error[0, ERROR_LIMIT]) if error)].compact.join(" ")
      @status_writer.syswrite("#{line}\n")
    rescue IOError, SystemCallError
      nil
    end

    def flush_output
      $stdout.flush
      $stderr.flush
    rescue IOError, SystemCallError
      nil
    end

    # Connections the app opened while booting must not be shared with the children.
    def release_shared_connections
      ::ActiveRecord::Base.connection_handler.clear_all_connections! if defined?(::ActiveRecord::Base)
      Connection.close!
    end

    def describe(status)
      status.signaled? ? "signal #{Signal.signame(status.termsig)}" : "exit #{status.exitstatus}"
    end

    def log(level, kind, message) = Instrumentation.emit(level, kind, message)
  end
end
