# frozen_string_literal: true

require "json"
require "time"

module JetstreamBridge
  # Turns the documented publish arguments into (subject, event_id, envelope JSON).
  # The envelope itself is assembled by the core in the README's field order.
  module Event
    FIELDS = %i[resource_type event_type payload event_id trace_id occurred_at subject producer
                resource_id schema_version headers].freeze

    module_function

    # Accepts the three documented forms (structured, "user.created", full envelope),
    # with symbol or string keys. Returns a Native::BuiltEvent: subject, event_id, json,
    # headers (the custom NATS headers, see Headers; nil when none).
    #
    # The core builds the common case in one call (Native.build_event: plain values,
    # nothing to convert); it returns nil for everything else, and for every invalid
    # argument, which Ruby then builds or rejects below.
    def build(args, config = JetstreamBridge.config)
      (args.is_a?(Hash) && Native.build_event(args, defaults(config))) || build_in_ruby(args, config)
    end

    # What the core fills in (Native::EventDefaults) for this config and JSON style.
    def defaults(config) = config.event_defaults(native_json_style)

    def build_in_ruby(args, config)
      fields = normalize(args)
      event_type = text(:event_type, fields[:event_type])
      raise ArgumentError, "event_type is required (e.g. \"created\" or \"user.created\")" if blank?(event_type)

      check_schema_version(fields[:schema_version])
      resource_type = text(:resource_type, fields[:resource_type])
      if blank?(resource_type)
        # "user.created" names its resource; otherwise (".created" too) "event", as the
        # pure-Ruby gem wrote.
        named = event_type.include?(".") ? event_type.split(".", 2).first : nil
        resource_type = blank?(named) ? "event" : named
      end
      payload = fields.fetch(:payload, {})
      subject = fields[:subject] ? text(:subject, fields[:subject]).tap { |s| Native.validate_subject(s) } : config.source_subject
      envelope = Native.build_envelope(
        string_or_nil(message_id(fields[:event_id])), event_type,
        text(:producer, fields[:producer] || config.app_name),
        string_or_nil(resource_type),
        string_or_nil(text(:resource_id, fields[:resource_id] || id_of(payload))),
        time_string(fields[:occurred_at]),
        string_or_nil(text(:trace_id, fields[:trace_id])),
        encode(payload)
      )
      headers = Headers.normalize(fields[:headers])
      Native.check_message_size(envelope.event_id, envelope.json.bytesize, headers, nil) if headers # 64 KB of headers, before connecting
      Native::BuiltEvent.new(subject: subject, event_id: envelope.event_id, json: envelope.json, headers: headers)
    end

    def normalize(args)
      raise ArgumentError, "publish expects keyword arguments or a Hash, got #{args.class}" unless args.is_a?(Hash)

      args.each_with_object({}) do |(key, value), out|
        name = key.to_sym
        raise ArgumentError, "unknown publish argument: #{key.inspect}" unless FIELDS.include?(name)

        out[name] = value
      end
    end

    # Only keys that exist count: fetch, unlike [], never runs the Hash's default proc
    # (which could change the caller's Hash and invent an id).
    def id_of(payload)
      return nil unless payload.is_a?(Hash)

      payload.fetch(:id, nil) || payload.fetch("id", nil) || nil # false is no id either
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
      # Time.iso8601 lets a trailing newline through; the string is stored as given.
      raise ArgumentError if value.match?(/[[:space:][:cntrl:]]/)

      Time.iso8601(value)
      value
    rescue ArgumentError
      raise ArgumentError, "occurred_at must be an ISO-8601 time like \"2025-08-13T21:00:00Z\", got #{value.inspect}"
    end

    # The core encodes payloads of plain values exactly as Ruby would, several times
    # faster; Ruby encodes anything else (it knows Ruby types; ActiveSupport's as_json
    # when loaded) and raises the errors.
    def encode(payload)
      style = native_json_style
      (style && Native.encode_json(payload, style)) || ruby_encode(payload)
    end

    # Whose output the core must match (one of Native::JSON_STYLES, see
    # Native.encode_json); nil when it cannot (an app's own ActiveSupport JSON encoder).
    def native_json_style
      return :json_gem unless defined?(ActiveSupport::JSON)

      # Naming the constant loads active_support/json when it is only autoloaded so far
      # (require "active_record" alone leaves it so).
      encoding = loaded { ActiveSupport::JSON::Encoding }
      return nil unless encoding && encoding.json_encoder == encoding::JSONGemEncoder

      encoding.escape_html_entities_in_json ? :active_support_html_safe : :active_support
    end

    # The block's constant. An autoload takes a lock a signal handler may not: there it is
    # loaded from a short-lived thread, waited for a bounded time (nil after it).
    def loaded
      yield
    rescue ThreadError
      loader = Background.thread("trap-load", report: true) { yield }
      loader.join(Signals::TRAP_LOG_WAIT) && loader.value
    end

    def ruby_encode(payload)
      json =
        if defined?(ActiveSupport::JSON)
          check_payload(payload) # ActiveSupport allows any nesting, and writes NaN as null
          ActiveSupport::JSON.encode(payload)
        else
          JSON.generate(payload)
        end
      raise ArgumentError, "payload is not valid UTF-8" unless json.valid_encoding?

      json
    rescue JSON::GeneratorError, JSON::NestingError, Encoding::UndefinedConversionError, SystemStackError => e
      detail = "#{e.class}: #{e.message[0, 200]}"
      detail = "it contains a String that is not valid UTF-8 (#{detail})" if e.message.match?(/partial character|illegal|malformed|invalid byte/i)
      raise ArgumentError, "payload cannot be encoded as JSON: #{detail}"
    end

    # Deepest payload nesting, as JSON.generate allows (the consumer's parser stops at 128
    # for the whole envelope, so a deeper event could never be handled).
    MAX_DEPTH = 100

    # What JSON.generate refuses and ActiveSupport lets through: nesting deeper than
    # MAX_DEPTH (or a circular payload) and NaN/Infinity (silently written as null).
    def check_payload(value, depth = 1)
      case value
      when Float
        raise ArgumentError, "payload cannot be encoded as JSON: #{value} is not allowed in JSON" unless value.finite?
      when Hash, Array
        raise ArgumentError, "payload cannot be encoded as JSON: nesting of #{MAX_DEPTH} is too deep (or the payload is circular)" if depth > MAX_DEPTH

        (value.is_a?(Hash) ? value.each_value : value.each).each { |v| check_payload(v, depth + 1) }
      end
    end

    # A text field as a UTF-8 String (other encodings converted), or an ArgumentError
    # naming the field: invalid bytes would otherwise fail deep in the core, or not at all.
    def text(name, value)
      return nil if value.nil?
      # Their to_s is an inspect dump ("{:a=>1}"), never a name or an id.
      raise ArgumentError, "#{name} must be a String, Symbol or Integer, got #{value.class}" if value.is_a?(Enumerable) || value == true || value == false

      string = value.to_s
      return string if string.encoding == Encoding::UTF_8 && string.valid_encoding?

      string = string.encoding == Encoding::BINARY ? string.dup.force_encoding(Encoding::UTF_8) : string.encode(Encoding::UTF_8)
      raise ArgumentError, "#{name} is not valid UTF-8 text: #{string.inspect[0, 60]}" unless string.valid_encoding?

      string
    rescue EncodingError
      raise ArgumentError, "#{name} cannot be converted to UTF-8 from #{value.to_s.encoding}: #{value.to_s.inspect[0, 60]}"
    end

    # Longest event_id: it travels as the Nats-Msg-Id header (the server's limit on all
    # headers is 64 KB, and the server keeps every id for the duplicate window).
    MAX_EVENT_ID_BYTES = 1024

    # The event_id, which becomes the Nats-Msg-Id header: one line of text, bounded.
    def message_id(value)
      id = text(:event_id, value)
      return id if id.nil?
      raise ArgumentError, "event_id must not contain control characters (CR, LF, ...): #{id.inspect[0, 60]}" if id.match?(/[[:cntrl:]]/)
      raise ArgumentError, "event_id is #{id.bytesize} bytes; at most #{MAX_EVENT_ID_BYTES}" if id.bytesize > MAX_EVENT_ID_BYTES
      # The server trims the Nats-Msg-Id value: " a" would be dropped as a duplicate of "a".
      raise ArgumentError, "event_id must not start or end with whitespace: #{id.inspect[0, 60]}" if id.match?(/\A[[:space:]]|[[:space:]]\z/) && !blank?(id)

      id
    end

    def string_or_nil(value)
      blank?(value) ? nil : value.to_s
    end

    def blank?(value)
      value.nil? || value.to_s.strip.empty?
    end
  end
end
