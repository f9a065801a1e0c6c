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
      if config.use_outbox
        Outbox.record([Event.build(args, config)])
      elsif !publish_in_core(args, config)
        subject, event_id, json = Event.build(args, config)
        publish_raw(subject, json, event_id)
      end
      true
    end

    # How long a publish keeps retrying while the stream exists but has no leader (a
    # cluster election takes a few seconds), beyond the retry strategy's attempts. Each
    # attempt already sends again within request_timeout (the core's resends).
    ELECTION_BUDGET = 15.0

    # Publishes an already-built envelope; returns [stream, sequence, duplicate].
    # `failed_attempt`: the error of a first attempt made already (publish_in_core).
    def publish_raw(subject, json, event_id, failed_attempt: nil)
      missing_stream = false
      unavailable_since = nil
      RetryStrategy.with_retries(strategy, attempts) do
        # The stream may have been deleted: provision it again before retrying.
        Connection.ensure_topology! if missing_stream && JetstreamBridge.config.auto_provision
        begin
          if failed_attempt
            error, failed_attempt = failed_attempt, nil
            raise error # handled here like the failure of any attempt
          end
          Connection.client.publish(subject, json, event_id)
        rescue StreamUnavailableError
          # The stream had no leader for a whole request_timeout: a long election.
          unavailable_since ||= monotonic
          retry if monotonic - unavailable_since < ELECTION_BUDGET
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
      if config.use_outbox
        built = events.map { |e| Event.build(e, config) }
        Outbox.record(built) unless built.empty?
        return BatchResult.new(published: built.size, duplicates: 0, failed: [], event_ids: built.map { |b| b[1] })
      end
      publish_batch_in_core(events, window, config) || publish_built(events.map { |e| Event.build(e, config) }, window)
    ensure
      Connection.drain_events
    end

    private

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

    # The common case of publish in one call: the core builds the event and sends it.
    # False (nothing sent) when Ruby must build it, or before the first connection (bad
    # input raises before connecting, and connecting is retried). A failed attempt's
    # error carries the built event, and the retries go on with it (same event_id).
    def publish_in_core(args, config)
      style = Event.native_json_style
      client = Connection.current_client
      return false unless style && client

      begin
        client.publish_event(args, config.source_subject, config.app_name, style)
      rescue Error => e
        raise unless e.unsent_event

        subject, event_id, json = e.unsent_event
        publish_raw(subject, json, event_id, failed_attempt: e)
        true
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

      event_ids, duplicates, failures = client.publish_events(events, config.source_subject, config.app_name, style, window)
      return nil unless event_ids

      failed = failures.map { |index, error, message| [index, event_ids[index], error, message] }
      BatchResult.new(published: events.size - failed.size, duplicates: duplicates, failed: failed, event_ids: event_ids)
    end

    # Events built by Event.build ([subject, event_id, json]), with acks in flight.
    def publish_built(built, window)
      rows = Connection.client.publish_batch(built.map { |subject, id, json| [subject, json, id] }, window)
      result = BatchResult.new(published: 0, duplicates: 0, failed: [], event_ids: built.map { |b| b[1] })
      rows.each_with_index do |row, i|
        if row[0]
          result.published += 1
          result.duplicates += 1 if row[3]
        else
          result.failed << [i, built[i][1], row[1], row[2]]
        end
      end
      result
    end

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    def strategy
      RetryStrategy.build(@retry_strategy || JetstreamBridge.config.retry_strategy)
    end

    def attempts
      @attempts || JetstreamBridge.config.publish_attempts
    end
  end
end
