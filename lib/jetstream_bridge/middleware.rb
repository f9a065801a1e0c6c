# frozen_string_literal: true

module JetstreamBridge
  # Consumer middleware: `config.consumer_middleware.use(Klass, *args)` for every consumer,
  # `consumer.use(Klass, *args)` for one. Each entry is built once per consumer run
  # (`Klass.new(*args)`) and called for every message as
  # `call(event, context) { run the rest }`, in registration order (the first is
  # outermost). Not yielding acks the message without calling the handler; raising fails
  # it like a handler error (NAK with backoff, or dead letter). The inbox is the innermost
  # entry unless registered explicitly (`use(JetstreamBridge::Inbox)`), so only middleware
  # placed after it shares its database transaction.
  class Middleware
    Entry = Struct.new(:klass, :args, :block) do
      def build = klass.new(*args, &block)
    end

    def initialize(entries = [])
      @entries = entries
    end

    def initialize_copy(source)
      super
      @entries = source.entries.dup
    end

    def entries = @entries.dup.freeze

    def use(klass, *args, &block)
      raise ArgumentError, "middleware must be a class (built once per consumer run with #{klass.inspect}.new(*args)), got #{klass.inspect}" unless klass.is_a?(Class)
      unless klass.method_defined?(:call)
        raise ArgumentError, "middleware #{klass} must define call(event, context) { ... }"
      end

      @entries += [Entry.new(klass, args, block)]
      self
    end

    # The instances for one consumer run.
    def build = @entries.map(&:build)

    def inspect = "#<#{self.class.name} #{@entries.map { |e| e.klass.name || e.klass.inspect }.join(', ')}>"
    alias to_s inspect
  end
end
