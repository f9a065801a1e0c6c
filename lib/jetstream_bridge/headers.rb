# frozen_string_literal: true

module JetstreamBridge
  # Custom NATS headers given to publish (`headers: { "X-Tenant" => "acme" }`), checked
  # before anything is written or sent. A trace context (`traceparent`, `tracestate`)
  # travels like any other header and reaches the consumer's MessageContext#headers.
  module Headers
    # Header names: printable ASCII without spaces or ':' (what the NATS header block, like
    # HTTP's, can carry).
    NAME = /\A[!-9;-~]+\z/
    # The bridge sets Nats-* headers itself (Nats-Msg-Id from event_id); a caller's would
    # change how the server stores or deduplicates the event.
    RESERVED_PREFIX = /\Anats-/i
    # Control characters would end the header line or corrupt the block (tab is allowed).
    CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/
    # NATS trims a header value's leading and trailing whitespace in transit (Unicode
    # spaces too): such a value would arrive changed.
    EDGE_SPACE = /\A[[:space:]]|[[:space:]]\z/

    module_function

    # { "Name" => "value" } with String keys and values, or raises ArgumentError naming
    # the bad header. nil and {} give nil (no headers).
    def normalize(headers)
      return nil if headers.nil?
      raise ArgumentError, "headers must be a Hash of header name => value, got #{headers.class}" unless headers.is_a?(Hash)
      return nil if headers.empty?

      headers.each_with_object({}) do |(name, value), out|
        name = check_name(name)
        raise ArgumentError, "header #{name} is given twice" if out.key?(name)

        out[name] = check_value(name, value)
      end.freeze
    end

    def check_name(name)
      raise ArgumentError, "header names must be Strings or Symbols, got #{name.inspect}" unless name.is_a?(String) || name.is_a?(Symbol)

      name = name.to_s
      unless name.match?(NAME)
        raise ArgumentError, "header name #{name.inspect} is invalid: use printable ASCII without spaces or ':'"
      end
      if name.match?(RESERVED_PREFIX)
        hint = name.casecmp?("Nats-Msg-Id") ? " (set event_id instead: it becomes the Nats-Msg-Id)" : ""
        raise ArgumentError, "header #{name} is reserved: the bridge sets Nats-* headers itself#{hint}"
      end
      name
    end

    def check_value(name, value)
      unless value.is_a?(String) || value.is_a?(Symbol) || value.is_a?(Numeric)
        raise ArgumentError, "header #{name} must be a String, got #{value.class}"
      end

      text = value.to_s
      raise ArgumentError, "header #{name} is not valid UTF-8" unless text.dup.force_encoding(Encoding::UTF_8).valid_encoding?
      raise ArgumentError, "header #{name} contains a control character (a line break?)" if text.match?(CONTROL)
      raise ArgumentError, "header #{name} must not start or end with whitespace: #{text.inspect[0, 60]}" if text.match?(EDGE_SPACE)

      text.encoding == Encoding::UTF_8 ? text : text.dup.force_encoding(Encoding::UTF_8)
    end
  end
end
