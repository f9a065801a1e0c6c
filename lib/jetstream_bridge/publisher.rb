# frozen_string_literal: true

module JetstreamBridge
  # Publishes events and waits for the JetStream ack. Returns true, or raises a specific
  # JetstreamBridge error: it never returns false. Transient failures are retried by the
  # configured retry strategy; the Nats-Msg-Id header makes a retried publish that did
  # reach the server a dropped duplicate, not a second message.
  class Publisher
    # Outcome of publish_batch: `failed` holds [index, event_id, error_class_name, message].
    BatchResult = Struct.new(:published, :duplicates, :failed, :event_ids, keyword_init: true) do
      def success? = failed.empty?
    end

    def initialize(retry_strategy: nil, attempts: nil)
      @retry_strategy = retry_strategy
      @attempts = attempts
    end

    # The publisher JetstreamBridge.publish uses (configured defaults; holds no state).
    DEFAULT = new.freeze
    PUBLISH_EVENT = "publish.jetstream_bridge"
    BATCH_EVENT = "publish_batch.jetstream_bridge"

    class << self
      # Where events go instead of NATS in test mode (JetstreamBridge::Testing); nil otherwise.
      attr_accessor :sink
    end

    # With config.use_outbox the event is written to the outbox and published after the
    # open transaction commits (see Outbox); it still returns true.
    def publish(event = nil, **fields)
      publish_arguments(Publisher.arguments(event, fields))
    end

    # The publish arguments as one Hash (a positional Hash merged with the keywords).
    def self.arguments(event, fields)
      return fields unless event
      raise ArgumentError, "publish expects a Hash or keyword arguments, got #{event.class}" unless event.is_a?(Hash)

      event.merge(fields)
    end

    # `publish` with the arguments already in one Hash (from Publisher.arguments):
    # JetstreamBridge.publish hands over its own, with no copy on the way.
    def publish_arguments(args)
      config = JetstreamBridge.config
      config.validate_once! # a required setting still missing raises here, listing every problem
      if (sink = Publisher.sink)
        sink.record([Event.build(args, config)])
        return true
      end
      return send_event(args, config, nil) unless Instrumentation.listening?(PUBLISH_EVENT)

      payload = { event_id: nil, event_type: (args[:event_type] || args["event_type"]).to_s, subject: nil, stream: nil,
                  seq: nil, duplicate: nil, attempts: 0, outbox: config.use_outbox }
      Instrumentation.instrument(PUBLISH_EVENT, payload) { send_event(args, config, payload) }
    end

    # Publishes (or, with use_outbox, records) one event; true. `payload`, when someone
    # listens to publish.jetstream_bridge, gets what happened. The test sink
    # (publish_arguments), the outbox and NATS get the same event, built by the core
    # (Event.build); only where it goes differs.
    private def send_event(args, config, payload)
      if config.use_outbox
        built = Event.build(args, config)
        payload&.merge!(event_id: built.event_id, subject: built.subject)
        Outbox.record([built])
      else
        published_fields(payload, publish_now(args, config))
      end
      true
    end

    # What publish.jetstream_bridge's payload tells of a Native::Published.
    private def published_fields(payload, published)
      payload&.merge!(stream: published.stream, seq: published.seq, duplicate: published.duplicate,
                      event_id: published.event_id, subject: published.subject, attempts: published.attempts)
    end

    # Sends one event to NATS now (no outbox, no test sink) and waits for its ack, retried
    # as RetryStrategy.with_retries says; a Native::Published. `event`: publish arguments,
    # which the core builds in the same call, or a Native::BuiltEvent, sent as it is. A
    # retry sends the event the failed attempt built (Error#unsent_event: same event_id).
    def publish_now(event, config = JetstreamBridge.config)
      # Before the first connection, Ruby builds it: bad input raises before connecting.
      event = Event.build(event, config) unless event.is_a?(Native::BuiltEvent) || Connection.current_client
      missing_stream = false
      tries = 0
      published = RetryStrategy.with_retries(strategy, attempts) do
        tries += 1
        # The stream may have been deleted: provision it again before retrying.
        Connection.ensure_topology! if missing_stream && config.auto_provision
        client = Connection.client
        client.publish_event(event, Event.defaults(config)) ||
          client.publish_event(event = Event.build_in_ruby(event, config), Event.defaults(config)) # Ruby must build it
      rescue StreamNotFoundError => e
        # The JetStream API said no stream captures the subject. With auto_provision off,
        # say what is missing (TopologyError) instead of retrying.
        Connection.ensure_topology! if !config.auto_provision && config.verify_topology
        missing_stream = true
        event = e.unsent_event || event
        raise
      rescue Error => e
        event = e.unsent_event || event
        raise
      end
      published.attempts = tries
      published
    ensure
      Connection.drain_events
    end

    # Publishes many events with many acks in flight. Each event is a Hash in any publish
    # form. Invalid events raise ArgumentError before anything is sent. With
    # config.use_outbox they are written to the outbox (published after commit) and
    # `published` counts the events recorded.
    def publish_batch(events, window: JetstreamBridge.config.publish_batch_window)
      events = batch_events(events)
      check_window(window)
      config = JetstreamBridge.config
      config.validate_once!
      return send_batch(events, window, config) unless Instrumentation.listening?(BATCH_EVENT)

      payload = { count: events.size, published: 0, duplicates: 0, failed: 0, outbox: config.use_outbox }
      Instrumentation.instrument(BATCH_EVENT, payload) do
        send_batch(events, window, config).tap do |result|
          payload.merge!(published: result.published, duplicates: result.duplicates, failed: result.failed.size)
        end
      end
    ensure
      Connection.drain_events
    end

    private

    def send_batch(events, window, config)
      if Publisher.sink || config.use_outbox
        built = build_all(events, config)
        Publisher.sink ? Publisher.sink.record(built) : (Outbox.record(built) unless built.empty?)
        return BatchResult.new(published: built.size, duplicates: 0, failed: [], event_ids: built.map(&:event_id))
      end
      batch_result(publish_all_now(events, window, config))
    end

    # Sends every event to NATS with up to `window` acks in flight, once each (a failed
    # one is reported, not retried); a Native::BatchOutcome. The core builds them all in
    # the same call before it sends any (bad input raises, nothing sent); before the first
    # connection Ruby builds them first, so that bad input raises before connecting.
    def publish_all_now(events, window, config)
      events = build_all(events, config) unless Connection.current_client
      client = Connection.client
      client.publish_events(events, Event.defaults(config), window, true) ||
        client.publish_events(build_all(events, config), Event.defaults(config), window, true) # Ruby must build some
    end

    def batch_result(outcome)
      event_ids = outcome.event_ids
      failed = outcome.failures.map { |failure| [failure.index, event_ids[failure.index], failure.error_name, failure.message] }
      BatchResult.new(published: event_ids.size - failed.size, duplicates: outcome.duplicates, failed: failed, event_ids: event_ids)
    end

    # Every event built (nothing is sent before all are); an invalid one's error names its
    # index in the batch.
    def build_all(events, config)
      events.each_with_index.map do |event, index|
        Event.build(event, config)
      rescue ArgumentError => e
        raise e.exception("publish_batch events[#{index}]: #{e.message}")
      end
    end

    # publish_batch's events as an Array (any Enumerable but a Hash is taken as a list).
    def batch_events(events)
      return events if events.is_a?(Array)
      return events.to_a if events.is_a?(Enumerable) && !events.is_a?(Hash)

      raise ArgumentError, "publish_batch expects an Array of events (Hashes), got #{events.nil? ? 'nil' : events.class}"
    end

    def check_window(window)
      return if window.is_a?(Integer) && window.positive?

      raise ArgumentError, "publish_batch window must be a positive Integer, got #{window.inspect}"
    end

    def strategy
      RetryStrategy.build(@retry_strategy || JetstreamBridge.config.retry_strategy)
    end

    def attempts
      @attempts || JetstreamBridge.config.publish_attempts
    end
  end
end
