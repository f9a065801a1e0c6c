# frozen_string_literal: true

require "json"
require "jetstream_bridge"
require_relative "testing/recorder"
require_relative "testing/settler"

module JetstreamBridge
  # Test mode (README "Testing your app"): events are recorded instead of sent, so an
  # app's tests run with no nats-server. Loaded only by `require "jetstream_bridge/testing"`.
  #
  #   JetstreamBridge::Testing.fake!    # publish records; no connection, socket or thread
  #   JetstreamBridge::Testing.inline!  # ...and hands each event to Testing.handle handlers
  #   JetstreamBridge::Testing.real!    # back to NATS
  #   JetstreamBridge::Testing.fake! { ... }  # only for the block
  #
  # With use_outbox an event published in a transaction is recorded when it commits, and
  # never when it rolls back, as the outbox would send it.
  module Testing
    # One recorded event: what publish would have sent.
    Published = Struct.new(:subject, :headers, :envelope, keyword_init: true) do
      def event_id = envelope["event_id"]
      def event_type = envelope["event_type"]
      def payload = envelope["payload"]
      def to_s = "#{event_type} on #{subject} payload=#{payload.inspect}"
    end

    # An event a handler failed on for good: dead-lettered (use_dlq) or dropped (:term).
    DeadLetter = Struct.new(:event, :subject, :outcome, :reason, :error_class, :error_message, keyword_init: true)

    MODES = %i[real fake inline].freeze

    # Events (and dead letters) the records keep by default: the newest ones; older ones are
    # dropped, so a process left in fake mode does not grow without bound. Testing.max_recorded= changes it.
    MAX_RECORDED = 10_000

    @mode = :real
    @lock = Mutex.new # guards @handlers (replaced, not changed in place)
    # Appended, copied and emptied with single Array calls, which the GVL makes atomic: no
    # Mutex, so a signal handler (trap) records its publish here as it sends one for real.
    @published = []
    @dead_letters = []
    @handlers = []
    @max_recorded = MAX_RECORDED
    @warned = false

    class << self
      attr_reader :mode, :max_recorded

      # How many of the newest events (and dead letters) the records keep (a positive Integer).
      def max_recorded=(count)
        raise ArgumentError, "max_recorded must be a positive Integer, got #{count.inspect}" unless count.is_a?(Integer) && count.positive?

        @max_recorded = count
      end

      def fake!(&block) = switch(:fake, &block)
      def inline!(&block) = switch(:inline, &block)
      def real!(&block) = switch(:real, &block)

      def fake? = @mode != :real
      def inline? = @mode == :inline

      # The events recorded since the last clear!, oldest first (the newest max_recorded).
      def published = @published.dup

      # The events inline delivery (or deliver) dead-lettered or dropped.
      def dead_letters = @dead_letters.dup

      # Empties the records (not the handlers).
      def clear!
        @published.clear
        @dead_letters.clear
        nil
      end

      # Registers a handler (an object with call(event, subject, deliveries), or a block)
      # for inline delivery; returns it. unhandle removes it.
      def handle(handler = nil, &block)
        handler ||= block
        Consumer::HandlerSignature.check!(handler, "handle")

        @lock.synchronize { @handlers += [handler] }
        handler
      end

      def unhandle(handler = nil)
        @lock.synchronize { @handlers = handler ? @handlers - [handler] : [] }
        nil
      end

      # Runs `handler` for an event built exactly as publish builds it, through the real
      # handling path (middleware, inbox, executor); returns :ack, :nak, :dead_letter or
      # :term. `deliveries`: which delivery this is (max_deliver decides the dead letter).
      def deliver(handler, event_type:, payload:, deliveries: 1, **envelope_fields)
        Consumer::HandlerSignature.check!(handler, "deliver")
        config = JetstreamBridge.config
        built = Event.build(envelope_fields.merge(event_type: event_type, payload: payload), config)
        subject = envelope_fields.key?(:subject) || envelope_fields.key?("subject") ? built.subject : config.destination_subject
        Settler.new(self, handler, config).deliver(subject, JSON.parse(built.json), built.headers, deliveries)
      end

      # The Publisher's sink in fake and inline mode: Native::BuiltEvents (Event.build's).
      def record(built)
        Recorder.record(built) { |events| events.each { |event| arrived(event) } }
      end

      # Called by Recorder once an event counts as published.
      def arrived(event)
        keep_newest(@published << event)
        deliver_inline(event) if inline?
      end

      # Called by Settler when an event is dead-lettered or dropped.
      def dead_lettered(letter)
        keep_newest(@dead_letters << letter)
      end

      # Whether this process looks like a test run: RAILS_ENV or RACK_ENV is "test", or
      # RSpec or Minitest is loaded.
      def test_process?
        return true if %w[RAILS_ENV RACK_ENV].any? { |name| ENV[name] == "test" }

        !defined?(::RSpec::Core).nil? || !defined?(::Minitest::Test).nil?
      end

      private

      def switch(mode)
        raise ArgumentError, "unknown test mode #{mode.inspect}" unless MODES.include?(mode)

        previous = @mode
        apply(mode)
        return mode unless block_given?

        begin
          yield
        ensure
          apply(previous)
        end
      end

      def apply(mode)
        warn_outside_tests(mode)
        @mode = mode
        Publisher.sink = mode == :real ? nil : self
      end

      # Drops the oldest records past max_recorded (single Array calls, as above).
      def keep_newest(records)
        records.shift while records.size > @max_recorded
      end

      # Fake mode in a process that is not a test (a console, a server, a job) means events
      # silently not sent: said once per process, through config.logger.
      def warn_outside_tests(mode)
        return if mode == :real || @warned || test_process?

        @warned = true
        Instrumentation.emit("warn", "testing_outside_tests",
                             "JetstreamBridge::Testing.#{mode}! in a process that is not a test (RAILS_ENV=#{ENV['RAILS_ENV'].inspect}, " \
                             "RACK_ENV=#{ENV['RACK_ENV'].inspect}, no RSpec or Minitest): events are recorded, not sent " \
                             "(the newest #{@max_recorded} kept)")
      end

      # Each handler gets the event as a consumer would: redelivered after a failure (the
      # backoff is not waited) until it succeeds or max_deliver decides its dead letter.
      def deliver_inline(event)
        config = JetstreamBridge.config
        @handlers.each do |handler|
          settler = Settler.new(self, handler, config)
          (1..config.max_deliver).each do |deliveries|
            break unless settler.deliver(event.subject, event.envelope, event.headers, deliveries) == :nak
          end
        end
      end
    end
  end
end
