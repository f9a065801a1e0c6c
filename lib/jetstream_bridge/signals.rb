# frozen_string_literal: true

module JetstreamBridge
  # SIGTERM/SIGINT stop a long-running loop (consumer, outbox relay) gracefully when it
  # runs on the main thread. Handlers the app had are chained (when they are Procs) and
  # restored afterwards. The trap only calls `stoppable.stop!`, which must not log or
  # take locks: Ruby forbids both in trap context. trap_context? and
  # trap_waits_on_logging? tell code an app's own handler runs (a publish from a trap)
  # where it stands.
  module Signals
    STOP_SIGNALS = %w[TERM INT].freeze

    module_function

    # Set on a thread a signal handler waits for (Connection.connect_from_trap).
    TRAP_HELPER = :jetstream_bridge_trap_helper
    # Longest wait (seconds) of a signal handler for one of its log lines: longer only when
    # the signal interrupted its thread inside the logger, which holds the logger's lock
    # until the handler returns; the line is written then.
    TRAP_LOG_WAIT = 0.5

    # Whether this code runs in a signal handler (trap), where Ruby forbids taking a Mutex
    # (Mutex#lock raises ThreadError there; Logger then drops its line).
    def trap_context?
      Mutex.new.synchronize { false }
    rescue ThreadError
      true
    end

    # Whether a log line written here could wait forever: in a signal handler, or in a
    # thread it waits for, when the handler interrupted its thread inside the logger.
    def trap_waits_on_logging?
      Thread.current.thread_variable_get(TRAP_HELPER) || trap_context?
    end

    def stopping(stoppable)
      return yield unless Thread.current == Thread.main

      previous = {}
      STOP_SIGNALS.each do |signal|
        previous[signal] = trap(signal) do |signo|
          stoppable.stop!
          chained = previous[signal]
          chained.call(signo) if chained.respond_to?(:call)
        end
      end
      yield
    ensure
      previous&.each { |signal, handler| trap(signal, handler.nil? ? "DEFAULT" : handler) }
    end
  end
end
