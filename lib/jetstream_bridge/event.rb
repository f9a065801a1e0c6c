# frozen_string_literal: true

require "json"
require "time"

module JetstreamBridge
  # Turns the documented publish arguments into (subject, event_id, envelope JSON).
  # The envelope itself is assembled by the core in the README's field order.
  module Event
    FIELDS = %i[resource_type event_type payload event_id trace_id occurred_at subject producer
                resource_id schema_version].freeze

    module_function

    # Accepts the three documented forms (structured, "user.created", full envelope),
    # with symbol or string keys. Returns [subject, event_id, json].
    def build(args, config = JetstreamBridge.config)
      fields = normalize(args)
      event_type = fields[:event_type]
      raise ArgumentError, "event_type is required (e.g. \"created\" or \"user.created\")" if blank?(event_type)

      event_type = event_type.to_s
      check_schema_version(fields[:schema_version])
      resource_type = fields[:resource_type]
      if blank?(resource_type)
        # "user.created" names its resource; otherwise "event", as the pure-Ruby gem wrote.
        resource_type = event_type.include?(".") ? event_type.split(".").first : "event"
      end
      payload = fields.fetch(:payload, {})
      subject = fields[:subject] ? fields[:subject].to_s.tap { |s| Native.validate_subject(s) } : config.source_subject
      event_id, json = Native.build_envelope(
        string_or_nil(fields[:event_id]), event_type,
        (fields[:producer] || config.app_name).to_s,
        string_or_nil(resource_type),
        string_or_nil(fields[:resource_id] || id_of(payload)),
        time_string(fields[:occurred_at]),
        string_or_nil(fields[:trace_id]),
        encode(payload)
      )
      [subject, event_id, json]
    end

    def normalize(args)
      raise ArgumentError, "publish expects keyword arguments or a Hash, got #{args.class}" unless args.is_a?(Hash)

      args.each_with_object({}) do |(key, value), out|
        name = key.to_sym
        raise ArgumentError, "unknown publish argument: #{key.inspect}" unless FIELDS.include?(name)

        out[name] = value
      end
    end

    def id_of(payload)
      return nil unless payload.is_a?(Hash)

      payload[:id] || payload["id"]
    end

    # The core writes schema_version 1; another value would be dropped silently.
    def check_schema_version(version)
      return if version.nil? || version.to_s == "1"

      raise ArgumentError, "schema_version #{version.inspect} is not supported: envelopes are written with schema_version 1"
    end

    # getutc, not utc: Time#utc would convert the caller's object in place.
    def time_string(value)
      case value
      when nil then nil
      when Time then value.getutc.iso8601(3)
      when String then iso8601_string(value)
      else
        return value.to_time.getutc.iso8601(3) if value.respond_to?(:to_time)

        raise ArgumentError, "occurred_at must be a Time or an ISO-8601 String, got #{value.class}"
      end
    end

    # A String occurred_at is kept as given, once it is known to be ISO-8601.
    def iso8601_string(value)
      Time.iso8601(value)
      value
    rescue ArgumentError
      raise ArgumentError, "occurred_at must be an ISO-8601 time like \"2025-08-13T21:00:00Z\", got #{value.inspect}"
    end

    # Ruby encodes the payload (it knows Ruby types; ActiveSupport's as_json when loaded).
    def encode(payload)
      json = defined?(ActiveSupport::JSON) ? ActiveSupport::JSON.encode(payload) : JSON.generate(payload)
      raise ArgumentError, "payload is not valid UTF-8" unless json.valid_encoding?

      json
    rescue JSON::GeneratorError, JSON::NestingError, Encoding::UndefinedConversionError, SystemStackError => e
      raise ArgumentError, "payload cannot be encoded as JSON: #{e.class}: #{e.message[0, 200]}"
    end

    def string_or_nil(value)
      blank?(value) ? nil : value.to_s
    end

    def blank?(value)
      value.nil? || value.to_s.strip.empty?
    end
  end
end
