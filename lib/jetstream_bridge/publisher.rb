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
    # listens to publish.jetstream_bridge, gets what happened.
    private def send_event(args, config, payload)
      if config.use_outbox
        built = Event.build(args, config)
        payload&.merge!(event_id: built.event_id, subject: built.subject)
        Outbox.record([built])
      elsif (published = publish_in_core(args, config))
        published_fields(payload, published)
      else
        built = Event.build(args, config)
        payload&.merge!(event_id: built.event_id, subject: built.subject)
        published_fields(payload, publish_raw(built.subject, built.json, built.event_id, headers: built.headers))
      end
      true
    end

    # What publish.jetstream_bridge's payload tells of a Native::Published.
    private def published_fields(payload, published)
      payload&.merge!(stream: published.stream, seq: published.seq, duplicate: published.duplicate,
                      event_id: published.event_id, subject: published.subject, attempts: published.attempts)
    end

    # How long a publish keeps retrying while the stream exists but has no leader (a
    # cluster election takes a few seconds), beyond the retry strategy's attempts. Each
    # attempt already sends again within request_timeout (the core's resends).
    ELECTION_BUDGET = 15.0

    # Publishes an already-built envelope; returns a Native::Published.
    # `failed_attempt`: the error of a first attempt made already (publish_in_core).
    def publish_raw(subject, json, event_id, failed_attempt: nil, headers: nil)
      missing_stream = false
      unavailable_since = nil
      tries = 0
      ack = RetryStrategy.with_retries(strategy, attempts) do
        tries += 1
        # The stream may have been deleted: provision it again before retrying.
        Connection.ensure_topology! if missing_stream && JetstreamBridge.config.auto_provision
        begin
          if failed_attempt
            error, failed_attempt = failed_attempt, nil
            raise error # handled here like the failure of any attempt
          end
          client = Connection.client
          headers ? client.publish_with_headers(subject, json, headers, event_id) : client.publish(subject, json, event_id)
        rescue StreamUnavailableError
          # The stream had no leader for a whole request_timeout: a long election.
          unavailable_since ||= Background.monotonic
          retry if Background.monotonic - unavailable_since < ELECTION_BUDGET
          raise
        rescue StreamNotFoundError
          # The JetStream API said no stream captures the subject. With auto_provision
          # off, say what is missing (TopologyError) instead of retrying.
          config = JetstreamBridge.config
          Connection.ensure_topology! if !config.auto_provision && config.verify_topology
          missing_stream = true
          raise
        end
      end
      Native::Published.new(stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate, event_id: event_id, subject: subject,
                            attempts: tries)
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
      publish_batch_in_core(events, window, config) || publish_built(build_all(events, config), window)
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

    # The common case of publish in one call: the core builds the event and sends it; a
    # Native::Published once acked. False (nothing sent) when Ruby must build it, or
    # before the first connection (bad input raises before connecting, and connecting is
    # retried). A failed attempt's error carries the built event (Error#unsent_event, a
    # Native::BuiltEvent), and the retries go on with it (same event_id).
    def publish_in_core(args, config)
      style = Event.native_json_style
      client = Connection.current_client
      return false unless style && client

      begin
        client.publish_event(args, config.source_subject, config.app_name, style)
      rescue Error => e
        unsent = e.unsent_event or raise
        publish_raw(unsent.subject, unsent.json, unsent.event_id, failed_attempt: e)
      ensure
        Connection.drain_events(client)
      end
    end

    # publish_batch in one call: the core builds every event and sends them. Nil (nothing
    # sent) when Ruby must build any of them.
    def publish_batch_in_core(events, window, config)
      style = Event.native_json_style
      client = Connection.current_client
      return nil unless style && client && events.is_a?(Array)

      outcome = client.publish_events(events, config.source_subject, config.app_name, style, window)
      return nil unless outcome

      event_ids = outcome.event_ids
      failed = outcome.failures.map { |failure| batch_failure(failure, event_ids[failure.index]) }
      BatchResult.new(published: events.size - failed.size, duplicates: outcome.duplicates, failed: failed, event_ids: event_ids)
    end

    # A BatchResult#failed entry of a Native::Failure: [index, event_id, "PublishTimeoutError", message].
    def batch_failure(failure, event_id)
      [failure.index, event_id, failure.error_name, failure.message]
    end

    # Events built by Event.build (Native::BuiltEvents), with acks in flight.
    def publish_built(built, window)
      outgoing = built.map { |b| Native::Outgoing.new(subject: b.subject, json: b.json, event_id: b.event_id, headers: b.headers) }
      rows = Connection.client.publish_batch(outgoing, window, true)
      result = BatchResult.new(published: 0, duplicates: 0, failed: [], event_ids: built.map(&:event_id))
      rows.each do |row|
        if row.ok?
          result.published += 1
          result.duplicates += 1 if row.duplicate
        else
          result.failed << batch_failure(row, built[row.index].event_id)
        end
      end
      result
    end


    def strategy
      RetryStrategy.build(@retry_strategy || JetstreamBridge.config.retry_strategy)
    end

    def attempts
      @attempts || JetstreamBridge.config.publish_attempts
    end
  end
end
