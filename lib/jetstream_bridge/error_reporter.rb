# frozen_string_literal: true

module JetstreamBridge
  # config.on_error: called once for every handler failure (with its MessageContext) and
  # every background failure (outbox relay, connection: a Hash saying where). Without it,
  # errors go to Rails.error (Rails 7+) when that exists. Never raises into the caller.
  module ErrorReporter
    module_function

    def report(error, context)
      handler = JetstreamBridge.config.on_error
      if handler
        handler.call(error, context)
      elsif defined?(::Rails) && ::Rails.respond_to?(:error) && ::Rails.error.respond_to?(:report)
        ::Rails.error.report(error, handled: true, context: rails_context(context))
      end
    rescue StandardError => e
      JetstreamBridge.config.logger&.error("[JetstreamBridge] on_error raised #{e.class}: #{Native.redact(e.message.to_s)} " \
                                           "(reporting #{error.class})")
    end

    def rails_context(context)
      data = context.respond_to?(:to_h) ? context.to_h : { context: context }
      { jetstream_bridge: data.except(:headers) }
    end
  end
end
