# frozen_string_literal: true

require_relative "instrumenter"

module JetstreamBridge
  # Two kinds of events:
  # - log events (emit): a line for config.logger and, when ActiveSupport is loaded, an
  #   ActiveSupport::Notifications event "<kind>.jetstream_bridge" with the `message`;
  # - structured events (instrument / notify): "publish.jetstream_bridge",
  #   "process.jetstream_bridge"... (README "Instrumentation"), whose payload is data, sent
  #   to JetstreamBridge.instrumenter's subscribers and to ActiveSupport::Notifications.
  module Instrumentation
    LEVELS = { "debug" => :debug, "info" => :info, "warn" => :warn, "error" => :error }.freeze
    # The built-in hook (JetstreamBridge.instrumenter); one per process.
    HOOK = Instrumenter.new

    module_function

    def emit(level, kind, message, payload = {})
      # In a signal handler the logger may not take its lock (the line would be dropped):
      # emit from a short-lived thread, which may, waiting for it a bounded time (the lock
      # may be held by the very thread the signal interrupted).
      if Signals.trap_waits_on_logging?
        Background.thread("trap-log", report: true) { emit(level, kind, message, payload) }.join(Signals::TRAP_LOG_WAIT)
        return
      end

      logger = JetstreamBridge.config.logger
      logger&.public_send(LEVELS.fetch(level.to_s, :info), "[JetstreamBridge] #{Native.redact(message.to_s)}")
      name = "#{kind}.jetstream_bridge"
      return unless active_support_listening?(name)

      ActiveSupport::Notifications.instrument(name, payload.merge(message: Native.redact(message.to_s)))
    end

    # Whether anything subscribes to the event `name` (the built-in hook or ActiveSupport).
    # Checked before building a payload: with no subscriber an event costs this lookup.
    def listening?(name)
      HOOK.listening?(name) || active_support_listening?(name)
    end

    # Whether ActiveSupport is loaded and subscribes to `name`. Its first lookup of a name
    # takes a Mutex, which a signal handler (trap) may not: there it asks from a thread,
    # for a bounded time (the thread the signal interrupted may hold that Mutex; then the
    # event is not sent).
    def active_support_listening?(name)
      return false unless defined?(ActiveSupport::Notifications)

      ActiveSupport::Notifications.notifier.listening?(name)
    rescue ThreadError
      lookup = Background.thread("trap-lookup", report: true) { ActiveSupport::Notifications.notifier.listening?(name) }
      lookup.join(Signals::TRAP_LOG_WAIT) ? lookup.value : false
    end

    # Runs the block (yielding the payload, for it to fill in) and sends the event once it
    # is done: `duration` (milliseconds) added, and `error_class` / `error_message`
    # (redacted) when the block raised; the exception then goes on. The caller checks
    # listening? first, so nothing is built or timed when nobody listens.
    def instrument(name, payload, &block)
      if !active_support_listening?(name)
        measure(payload, &block)
      elsif Signals.trap_context?
        begin
          measure(payload, &block)
        ensure
          notify_active_support_from_trap(name, payload)
        end
      else
        ActiveSupport::Notifications.instrument(name, payload) { measure(payload, &block) }
      end
    ensure
      HOOK.publish(name, payload)
    end

    # In a signal handler ActiveSupport may not instrument (7.2 takes a Mutex for its
    # per-thread registry on every call): the finished event goes to its subscribers from a
    # short-lived thread, waited for a bounded time (the thread the signal interrupted may
    # hold a lock they need; then it is sent when that thread goes on).
    def notify_active_support_from_trap(name, payload)
      Background.thread("trap-notify", report: true) { ActiveSupport::Notifications.instrument(name, payload) { nil } }
                .join(Signals::TRAP_LOG_WAIT)
    end

    # An event that reports something already done (nothing to time).
    def notify(name, payload)
      instrument(name, payload) { nil } if listening?(name)
    end

    # The error fields of a payload.
    def error_fields(error)
      { error_class: error.class.name, error_message: Native.redact(error.message.to_s) }
    end

    def measure(payload)
      started = Background.monotonic
      yield payload
    rescue Exception => e # rubocop:disable Lint/RescueException -- reported, then raised on
      payload.merge!(error_fields(e))
      raise
    ensure
      payload[:duration] = ((Background.monotonic - started) * 1000.0).round(3)
    end
  end

  class << self
    # The built-in subscriber hook (see Instrumenter).
    def instrumenter = Instrumentation::HOOK
  end
end
