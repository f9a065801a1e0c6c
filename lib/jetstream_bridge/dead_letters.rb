# frozen_string_literal: true

require "json"
require "time"

module JetstreamBridge
  # The dead-letter queue: the entries on config.dlq_subject in the bridge's stream, read
  # one stream lookup at a time (a DLQ of a million entries is never loaded whole), and
  # replayed to their original subject or discarded.
  #
  #   JetstreamBridge::DeadLetters.list(limit: 20)                   # oldest first
  #   JetstreamBridge::DeadLetters.replay(42)                        # => true
  #   JetstreamBridge::DeadLetters.replay_all(reason: "max_deliver") # => count replayed
  #   JetstreamBridge::DeadLetters.discard_all(older_than: "7d")     # => count discarded
  module DeadLetters
    # The names of the headers the DLQ copy gets, as the core writes them ({"reason" =>
    # "X-Dead-Letter-Reason", ...}).
    HEADERS = Native::DLQ_HEADERS
    # What the DLQ copy adds to the original's headers: a replay sends the original's only.
    ADDED_HEADERS = HEADERS.values.freeze

    # The largest stream sequence (they are unsigned 64-bit integers).
    MAX_SEQUENCE = (2**64) - 1

    # One dead letter. `seq` is its sequence in the stream (what replay and discard take).
    Entry = Struct.new(:seq, :headers, :body, :stored_at, keyword_init: true) do
      def reason = headers[HEADERS["reason"]]
      def error_class = headers[HEADERS["error_class"]]
      def error_message = headers[HEADERS["error_message"]]
      def original_subject = headers[HEADERS["original_subject"]]
      def deliveries = headers[HEADERS["deliveries"]]&.to_i

      # The envelope's event_id, else the original's Nats-Msg-Id.
      def event_id
        (event["event_id"] if event.is_a?(Hash)) || headers[HEADERS["original_msg_id"]]
      end

      # The parsed envelope, or nil when the body is not JSON (a malformed message).
      def event
        JSON.parse(body)
      rescue JSON::ParserError
        nil
      end

      def failed_at
        Time.iso8601(headers[HEADERS["failed_at"]].to_s)
      rescue ArgumentError
        stored_at
      end
    end

    class << self
      # Up to `limit` entries, oldest first, from stream sequence `after` + 1 on.
      def list(limit: 100, after: 0)
        raise ArgumentError, "limit must be a positive Integer, got #{limit.inspect}" unless limit.is_a?(Integer) && limit.positive?

        entries = []
        each(after: after) do |entry|
          entries << entry
          break if entries.size >= limit
        end
        entries
      end

      # Yields every entry, oldest first, reading one at a time (an Enumerator without a
      # block); with `through`, only entries up to that stream sequence.
      def each(after: 0, through: nil)
        return enum_for(:each, after: after, through: through) unless block_given?

        seq = after_sequence(after)
        while (found = client.stream_message(stream, seq + 1, subject))
          entry = entry_from(found)
          break if through && entry.seq > through

          seq = entry.seq
          yield entry
        end
      end

      # The entry with this sequence, or nil when there is none (or it is not a dead letter).
      def find(seq)
        found = client.stream_message(stream, sequence(seq), nil)
        found && found.subject == subject ? entry_from(found) : nil
      end

      # Publishes the entry's original body and headers to its original subject, with
      # X-Replayed-From: <seq> and Nats-Msg-Id "replay:<stream>:<seq>" (replaying one entry
      # twice within duplicate_window stores it once), then deletes the entry: only after
      # the publish is acked, so a crash in between loses nothing and a second run of the
      # replay duplicates nothing. The consumer's inbox keys events by their envelope
      # event_id, so a replayed event already processed is not handled again.
      def replay(seq)
        entry = find!(seq)
        target = entry.original_subject
        raise Error, "dead letter #{entry.seq} has no #{HEADERS['original_subject']}: it cannot be replayed" if target.to_s.empty?

        headers = entry.headers.reject { |name, _| ADDED_HEADERS.include?(name) }.merge(HEADERS["replayed_from"] => entry.seq.to_s)
        replayed = Native::BuiltEvent.new(subject: target, event_id: "replay:#{stream}:#{entry.seq}", json: entry.body, headers: headers)
        Publisher::DEFAULT.publish_now(replayed)
        client.delete_message(stream, entry.seq)
        true
      ensure
        Connection.drain_events
      end

      # Replays every entry (with `reason`, when given) that was there when it started, each
      # once; returns how many. Bounded by the stream's last sequence taken first: an event
      # that fails again is dead-lettered at a higher sequence, and a walk to the end would
      # replay it again, for as long as the consumer keeps failing it.
      def replay_all(reason: nil)
        each(through: last_sequence).count do |entry|
          next false if reason && entry.reason != reason.to_s

          replay(entry.seq)
        end
      end

      # Deletes the entry; true once it is gone.
      def discard(seq)
        client.delete_message(stream, find!(seq).seq)
        true
      end

      # Deletes every entry that failed more than `older_than` (a duration: "7d") ago, and
      # has `reason` when given, or every entry, of those there when it started; returns how many.
      def discard_all(older_than: nil, reason: nil)
        cutoff = older_than && Time.now - (Native.duration_ms(older_than, "older_than") / 1000.0)
        each(through: last_sequence).count do |entry|
          next false if cutoff && entry.failed_at > cutoff
          next false if reason && entry.reason != reason.to_s

          client.delete_message(stream, entry.seq)
        end
      end

      private

      def find!(seq)
        find(seq) or raise ArgumentError, "no dead letter with seq #{seq} in stream #{stream} (subject #{subject})"
      end

      def sequence(seq)
        value = integer_from(seq)
        raise ArgumentError unless value.is_a?(Integer) && value.positive? && value <= MAX_SEQUENCE

        value
      rescue ArgumentError, TypeError
        raise ArgumentError, "seq must be a positive Integer up to #{MAX_SEQUENCE} (a dead letter's stream sequence), got #{seq.inspect}"
      end

      # `after` of list/each: 0, or a stream sequence.
      def after_sequence(after)
        value = integer_from(after)
        raise ArgumentError unless value.is_a?(Integer) && value >= 0 && value < MAX_SEQUENCE

        value
      rescue ArgumentError, TypeError
        raise ArgumentError, "after must be 0 or a stream sequence (an Integer from 0 to #{MAX_SEQUENCE - 1}), got #{after.inspect}"
      end

      # An Integer, or a String of decimal digits as one; anything else as it is.
      def integer_from(value)
        value.is_a?(String) ? Integer(value.strip, 10) : value
      end

      # The Entry of a Native::StoredMessage (its headers read by the core, as a consumer reads them).
      def entry_from(found)
        Entry.new(seq: found.seq, headers: found.headers, body: found.body.force_encoding(Encoding::UTF_8),
                  stored_at: Time.iso8601(found.stored_at))
      end

      # The stream's last sequence now (0 when it has no stream).
      def last_sequence
        raw = client.stream_info(stream)
        raw ? JSON.parse(raw).dig("state", "last_seq").to_i : 0
      end

      def client = Connection.client
      def stream = JetstreamBridge.config.stream_name
      def subject = JetstreamBridge.config.dlq_subject
    end
  end
end
