# frozen_string_literal: true

module JetstreamBridge
  # Several worker processes from one command (rake jetstream_bridge:consume PROCESSES=4):
  # the app is booted once, then forked; each worker runs the block (a consumer) on its
  # own connection (the fork rules: a child never uses the parent's connection).
  #
  # - A worker that dies is started again after a pause that doubles with each quick
  #   death (RESTART_PAUSE up to MAX_RESTART_PAUSE; back to the start once a worker has
  #   lived STABLE_AFTER), and the death is logged.
  # - SIGTERM/SIGINT to the parent are sent on to every worker: each drains (finishes the
  #   handler in flight, gives its prefetched messages back) and exits; the parent exits 0
  #   once all have (1 if a worker failed to stop cleanly).
  # - No orphans: each worker holds the read end of a pipe whose write end only the parent
  #   holds. When the parent dies, even by SIGKILL, the pipe reads EOF and the worker stops
  #   itself as on SIGTERM.
  class Supervisor
    RESTART_PAUSE = 1.0
    MAX_RESTART_PAUSE = 30.0
    # Seconds a worker must live for its next death to count as a first one.
    STABLE_AFTER = 60.0
    # How often the parent checks for dead workers and due restarts.
    POLL = 0.1

    Slot = Struct.new(:index, :pid, :started_at, :pause, :restart_at)

    def initialize(processes:, &work)
      raise ArgumentError, "processes must be a positive Integer, got #{processes.inspect}" unless processes.is_a?(Integer) && processes.positive?
      raise ArgumentError, "Supervisor needs a block to run in each worker" unless work

      @slots = Array.new(processes) { |i| Slot.new(i, nil, nil, RESTART_PAUSE, nil) }
      @work = work
      @stopping = false
      @failed = false
    end

    # Runs until every worker has stopped after SIGTERM/SIGINT; returns the exit status.
    def run
      @life_reader, @life_writer = IO.pipe
      previous = %w[TERM INT].to_h { |signal| [signal, trap(signal) { stop!(signal) }] }
      release_shared_connections
      @slots.each { |slot| start(slot) }
      supervise
      @failed ? 1 : 0
    ensure
      previous&.each { |signal, handler| trap(signal, handler || "DEFAULT") }
      @life_writer&.close
      @life_reader&.close
    end

    private

    # Called from a trap: only flags and signals (no Mutex, no logger).
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
        reap
        break if @stopping && @slots.none?(&:pid)

        restart_due unless @stopping
        sleep POLL
      end
    end

    def reap
      while (pid, status = Process.wait2(-1, Process::WNOHANG))
        slot = @slots.find { |s| s.pid == pid } or next
        slot.pid = nil
        @stopping ? stopped(slot, status) : died(slot, status)
      end
    rescue Errno::ECHILD
      nil
    end

    def stopped(slot, status)
      @failed ||= !status.success?
      log("info", "worker_stopped", "worker #{slot.index} stopped (#{describe(status)})")
    end

    def died(slot, status)
      lived = monotonic - slot.started_at
      slot.pause = RESTART_PAUSE if lived >= STABLE_AFTER
      slot.restart_at = monotonic + slot.pause
      log("error", "worker_died", "worker #{slot.index} died (#{describe(status)}) after #{lived.round(1)}s; " \
                                  "starting it again in #{slot.pause}s")
      slot.pause = [slot.pause * 2, MAX_RESTART_PAUSE].min
    end

    def restart_due
      @slots.each do |slot|
        next if slot.pid || slot.restart_at.nil? || monotonic < slot.restart_at

        slot.restart_at = nil
        start(slot)
      end
    end

    def start(slot)
      slot.started_at = monotonic
      slot.pid = fork { run_worker(slot.index) }
      log("info", "worker_started", "worker #{slot.index} started (pid #{slot.pid})")
    end

    # In the child: the parent's traps are not ours; stop when the parent goes away.
    def run_worker(index)
      %w[TERM INT].each { |signal| trap(signal, "DEFAULT") }
      @life_writer.close
      watch_parent
      @work.call(index)
      # exit! skips the at_exit hooks inherited from the parent (its test runner, say);
      # what the worker printed must still get out.
      $stdout.flush
      $stderr.flush
      exit!(0)
    rescue Exception => e # rubocop:disable Lint/RescueException -- a worker reports why it ended, then exits
      warn("[JetstreamBridge] worker #{index} failed: #{e.class}: #{Native.redact(e.message.to_s)}") unless e.is_a?(SystemExit)
      exit!(e.is_a?(SystemExit) ? e.status : 1)
    end

    # A thread that reads the pipe only the parent writes to: EOF means the parent is gone,
    # and the worker stops itself as on SIGTERM (the consumer's trap drains it).
    def watch_parent
      reader = @life_reader
      Thread.new do
        reader.read # returns at EOF: the parent exited or was killed
        Process.kill("TERM", Process.pid)
      end
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

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
