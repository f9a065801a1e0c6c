# frozen_string_literal: true

module JetstreamBridge
  # The built-in subscriber hook (JetstreamBridge.instrumenter), for apps without
  # ActiveSupport; with it, the same events also go to ActiveSupport::Notifications.
  #
  #   JetstreamBridge.instrumenter.subscribe("process.jetstream_bridge") { |name, payload| ... }
  #   JetstreamBridge.instrumenter.subscribe(/jetstream_bridge/) { |name, payload| ... }
  #
  # A subscriber runs on the thread that did the work (a publishing request, a consumer
  # thread, the connection watcher) and must be quick; an exception it raises is logged,
  # never raised into that work.
  class Instrumenter
    Subscription = Struct.new(:pattern, :block) do
      def matches?(name) = pattern.nil? || (pattern.is_a?(Regexp) ? pattern.match?(name) : pattern == name)
    end

    def initialize
      @subscriptions = [].freeze
      @by_name = {}.freeze # name => matching subscriptions (filled on first lookup)
      @lock = Mutex.new
    end

    # pattern: an event name, a Regexp, or nil for every event. Returns the subscription.
    def subscribe(pattern = nil, &block)
      raise ArgumentError, "subscribe needs a block" unless block
      raise ArgumentError, "pattern must be a String, a Regexp or nil, got #{pattern.class}" unless pattern.nil? || pattern.is_a?(String) || pattern.is_a?(Regexp)

      subscription = Subscription.new(pattern, block)
      change { |list| list + [subscription] }
      subscription
    end

    def unsubscribe(subscription)
      change { |list| list - [subscription] }
      nil
    end

    # Whether anything subscribes to `name`: a frozen Hash lookup once warmed up, so the
    # work is measured only when someone listens.
    def listening?(name)
      return false if @subscriptions.empty?

      found = @by_name[name]
      found = matching(name) if found.nil?
      !found.empty?
    end

    def publish(name, payload)
      (@by_name[name] || matching(name)).each do |subscription|
        subscription.block.call(name, payload)
      rescue StandardError => e
        JetstreamBridge.config.logger&.error("[JetstreamBridge] #{name} subscriber raised #{e.class}: #{Native.redact(e.message.to_s)}")
      end
    end

    private

    # Copy-on-write: readers never take the lock.
    def change
      @lock.synchronize do
        @subscriptions = yield(@subscriptions).freeze
        @by_name = {}.freeze
      end
    end

    def matching(name)
      @lock.synchronize do
        found = @subscriptions.select { |s| s.matches?(name) }.freeze
        @by_name = @by_name.merge(name => found).freeze
        found
      end
    rescue ThreadError
      # A signal handler (trap) may not take a Mutex: answer from the list, uncached.
      @subscriptions.select { |s| s.matches?(name) }.freeze
    end
  end
end
