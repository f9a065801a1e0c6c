# frozen_string_literal: true

require "json"

module JetstreamBridge
  # Helpers of the jetstream_bridge:* tasks.
  module RakeSupport
    module_function

    # HANDLER="MyHandler": a class or object responding to call(event, subject, deliveries),
    # or a class whose instances do (instantiated with no arguments).
    def handler_from_env(name = ENV["HANDLER"])
      abort "jetstream_bridge:consume needs HANDLER=YourHandlerClass (responding to call(event, subject, deliveries))" if name.to_s.strip.empty?

      handler = Object.const_get(name.strip)
      return handler if handler.respond_to?(:call)

      instance = handler.new if handler.is_a?(Class)
      abort "HANDLER #{name} does not respond to call(event, subject, deliveries)" unless instance.respond_to?(:call)

      instance
    rescue NameError => e
      abort "HANDLER #{name}: #{e.message}"
    end

    def int_env(name)
      value = ENV[name].to_s.strip
      value.empty? ? nil : Integer(value)
    rescue ArgumentError
      abort "#{name} must be an integer, got #{ENV[name].inspect}"
    end

    def relay_from_env
      options = {}
      options[:batch_size] = int_env("BATCH_SIZE") if int_env("BATCH_SIZE")
      options[:interval] = ENV["INTERVAL"] if ENV["INTERVAL"].to_s.strip != "" # a duration or seconds
      options[:lease] = ENV["LEASE"] if ENV["LEASE"].to_s.strip != ""
      JetstreamBridge::OutboxRelay.new(**options)
    end
  end
end
