# frozen_string_literal: true

module JetstreamBridge
  # Turns what the core reports (as data) into log lines and, when ActiveSupport is
  # loaded, `ActiveSupport::Notifications` events named "<kind>.jetstream_bridge".
  module Instrumentation
    LEVELS = { "debug" => :debug, "info" => :info, "warn" => :warn, "error" => :error }.freeze

    module_function

    def emit(level, kind, message, payload = {})
      logger = JetstreamBridge.config.logger
      logger&.public_send(LEVELS.fetch(level.to_s, :info), "[JetstreamBridge] #{Native.redact(message.to_s)}")
      return unless defined?(ActiveSupport::Notifications)

      ActiveSupport::Notifications.instrument("#{kind}.jetstream_bridge", payload.merge(message: Native.redact(message.to_s)))
    end
  end
end
