# frozen_string_literal: true

require "json"
require_relative "table"
require_relative "prune"
require_relative "outbox/marker"
require_relative "outbox/delivery"
require_relative "outbox/after_commit"

module JetstreamBridge
  # Transactional outbox (config.use_outbox = true).
  #
  # JetstreamBridge.publish writes the event to the outbox table. Inside an ActiveRecord
  # transaction the row is written in that transaction and published only after it
  # commits (a rolled-back event is never published and leaves no row); outside one it is
  # written and published at once. Rows go pending -> publishing -> sent (sent_at), or
  # failed (attempts, last_error), retried by the relay with a growing delay, and dead
  # after config.outbox_max_attempts (or at once for an error no retry can fix); they are
  # published with `Nats-Msg-Id: <event_id>`.
  #
  # When NATS is unreachable publish still records the row and returns: direct publishing
  # pauses (RETRY_AFTER seconds after a failure, or while the connection is down) and the
  # rows stay pending for JetstreamBridge::OutboxRelay, which sends pending and failed rows.
  module Outbox
    PENDING = "pending"
    PUBLISHING = "publishing"
    SENT = "sent"
    FAILED = "failed"
    # Not retried any more (see mark): revived by retry_dead (rake jetstream_bridge:outbox:retry).
    DEAD = "dead"
    # Publish errors that no retry can fix: the row is dead at once.
    FINAL_ERRORS = [AuthorizationError, PayloadTooLargeError].freeze
    # Delay before a failed row is sent again: doubling with its attempts, capped (seconds).
    RETRY_BASE = 1.0
    RETRY_MAX = 300.0
    # Seconds direct publishing pauses after NATS failed to take an event.
    RETRY_AFTER = 5.0
    MAX_RETRY_AFTER = 60.0
    REQUIRED_COLUMNS = %w[event_id subject payload status].freeze
    # The columns a new row is written with (those of them the table has).
    INSERTED_COLUMNS = %w[event_id subject payload headers status attempts enqueued_at created_at updated_at].freeze
    # Rows per multi-row INSERT.
    INSERT_CHUNK = 500

    # One event: its row id (nil until inserted), where and what to publish, the status
    # its row was written with, its custom headers (nil: none), and the Native::BuiltEvent
    # it was recorded from (nil for a row read back from the table).
    Entry = Struct.new(:id, :subject, :event_id, :json, :status, :seq, :headers, :event) do
      # The event as Client#publish_events sends it.
      def built = event || Native::BuiltEvent.new(subject: subject, event_id: event_id, json: json, headers: headers)
    end

    # What the outbox keeps per process (ProcessState#outbox): until when direct publishing
    # is paused and after how many failures in a row, the last Entry#seq, the AfterCommit of
    # each open transaction (transaction => AfterCommit), and the server's max_payload
    # ([client it was read from, limit]).
    State = Struct.new(:suspended_until, :failures, :seq, :seq_mutex, :after_commit, :max_payload) do
      def initialize = super(0.0, 0, 0, Mutex.new, ObjectSpace::WeakMap.new, nil)
    end

    class << self
      def model
        Table.resolve_model(JetstreamBridge.config.outbox_model, "config.outbox_model")
      end

      def table
        t = Table.for(model)
        missing = REQUIRED_COLUMNS.reject { |c| t.has?(c) }
        raise ConfigurationError, "outbox table #{t.name} lacks column(s) #{missing.join(', ')}" unless missing.empty?

        t
      end

      # Records Native::BuiltEvents (Event.build's); publishes them after the open
      # transaction commits, or now when none is open. Returns the number recorded.
      def record(events)
        refuse_in_trap!
        t = table
        check_headers_column!(t, events)
        entries = events.map { |e| Entry.new(nil, e.subject, e.event_id, e.json, nil, next_seq, e.headers, e) }
        check_size!(entries)
        conn = t.connection
        if conn.transaction_open?
          # Joins the open transaction (a savepoint when it is not joinable, as in a test's
          # transactional fixtures), so the rows are written and published with the caller's
          # work: see AfterCommit.
          conn.transaction { after_commit_for(conn, t).add(entries) }
        else
          write(t, entries)
          dispatch(t, entries)
        end
        entries.size
      end

      # A signal handler may interrupt any transaction, and ActiveRecord's connection pool
      # takes locks Ruby forbids there (ThreadError): say so instead.
      def refuse_in_trap!
        return unless Signals.trap_context?

        raise Error, "publish with use_outbox cannot run in a signal handler (trap): ActiveRecord takes locks Ruby " \
                     "forbids there; publish from a thread the handler starts"
      end

      # The AfterCommits of the transaction now committing (its records), member included.
      # They are moved to the front of its records: ActiveRecord calls committed! in that
      # order after the COMMIT, so the transaction's own events are published before its
      # models' after_commit callbacks run (and publish events of their own).
      def committing_group(member)
        txn = member.table.connection.current_transaction
        records = txn.respond_to?(:records) ? txn.records : nil
        group = records ? records.grep(AfterCommit).uniq : []
        return [member] unless group.include?(member)

        records.replace(group + records.grep_v(AfterCommit))
        group
      end

      # The custom headers kept in a row's headers column (JSON), without the Nats-Msg-Id
      # the bridge sets from event_id; nil when there are none.
      def custom_headers(column)
        headers = column.is_a?(String) ? JSON.parse(column) : column
        return nil unless headers.is_a?(Hash)

        custom = headers.reject { |name, _| name.casecmp?("Nats-Msg-Id") }
        custom.empty? ? nil : custom
      rescue JSON::ParserError
        nil
      end

      # Inserts the rows of entries (INSERT_CHUNK per statement) and sets their ids.
      def write(t, entries)
        entries.each_slice(INSERT_CHUNK) { |chunk| insert(t, chunk) }
      end

      # Hands entries whose rows are committed to delivery: deliver now (outbox_delivery
      # :inline), or the process's Delivery thread (:background), which runs deliver in
      # the order the rows were handed over.
      def dispatch(t, entries)
        return deliver(t, entries) unless JetstreamBridge.config.background_outbox?

        ProcessState.current.delivery.push(t, entries)
      end

      # Publishes entries whose rows are committed and marks them sent or failed. Never
      # raises: what is not sent stays in the table for the relay.
      def deliver(t, entries)
        return if entries.empty?

        unless deliverable?
          release(t, entries)
          return
        end
        outcome = publish(entries)
        mark(t, entries, outcome, background: true)
        failure = outcome.failures.find { |f| transport_error?(f.error) }
        if failure
          suspend!("#{failure.error_name}: #{failure.message}")
        else
          state.failures = 0
        end
      rescue StandardError, ScriptError => e
        Instrumentation.emit("error", "outbox_deliver_failed",
                             "outbox: #{entries.size} event(s) left for the relay: #{e.class}: #{e.message}")
      ensure
        Connection.drain_events
      end

      # Marks rows after a publish attempt (`outcome`: Client#publish_events' for
      # `entries`): sent unless a Native::Failure names them. With background: true, sent
      # rows are marked by the Marker.
      def mark(t, entries, outcome, background: false)
        now = Time.now
        sent = []
        failed = Hash.new { |h, k| h[k] = [] }
        failures = outcome.failures_by_index
        entries.each_with_index do |entry, index|
          if (failure = failures[index])
            failed[[failure.error, failure.error_name, failure.message]] << entry
          else
            sent << entry
          end
        end
        if background && sent.all?(&:id)
          ProcessState.current.marker.push(t, sent)
        else
          mark_sent(t, sent, now)
        end
        failed.each do |(error, error_name, message), group|
          update(t, group, { "status" => failed_status(t, error), "updated_at" => now,
                             "last_error" => "#{error_name}: #{message}"[0, 4000], "attempts" => t.increment("attempts") })
        end
      end

      # Deletes `sent` rows sent more than `older_than` ("7d") ago, in batches; yields the
      # running total after each. Never touches a row that is not sent. Returns the count.
      def prune(older_than:, &progress)
        t = table
        Prune.rows(t, status: SENT, column: Prune.time_column(t, %w[sent_at updated_at created_at]),
                      older_than: older_than, &progress)
      end

      # Seconds before a row that failed `attempts` times is sent again.
      def retry_delay(attempts)
        [RETRY_BASE * (2**([attempts.to_i, 1].max - 1)), RETRY_MAX].min
      end

      # Dead rows back to failed with no attempts, sent by the next relay pass: all, or
      # those with these ids. Returns how many.
      def retry_dead(ids: nil)
        t = table
        where = "#{t.q('status')} = #{t.quote(DEAD)}"
        where += " AND #{t.ids_in(Array(ids))}" if ids
        values = { "status" => FAILED }
        values["attempts"] = 0 if t.has?("attempts")
        values["updated_at"] = Time.now if t.has?("updated_at")
        t.with_connection do
          t.connection.exec_update("UPDATE #{t.quoted_table} SET #{t.assignments(values)} WHERE #{where}", "JetstreamBridge outbox")
        end
      end

      def mark_sent(t, entries, now)
        update(t, entries, { "status" => SENT, "sent_at" => now, "updated_at" => now, "last_error" => nil,
                             "attempts" => t.increment("attempts") })
      end

      # Waits until rows committed so far in this process are delivered (outbox_delivery
      # :background: Delivery) and marked sent (in the background: Marker); true when done
      # within `timeout` seconds.
      def flush_marks(timeout: 10)
        ProcessState.current.flush_marks(timeout)
      end

      # True while direct publishing is paused (the relay sends meanwhile).
      def suspended?
        Background.monotonic < state.suspended_until
      end

      # Resumes direct publishing (the relay calls it after a successful send).
      def resume!
        s = state
        s.suspended_until = 0.0
        s.failures = 0
      end

      # Pauses direct publishing: RETRY_AFTER seconds, doubling with each failure in a row
      # up to MAX_RETRY_AFTER (an unreachable server costs a connect attempt per pause).
      def suspend!(reason)
        first = !suspended?
        s = state
        s.failures += 1
        s.suspended_until = Background.monotonic + [RETRY_AFTER * (2**[s.failures - 1, 4].min), MAX_RETRY_AFTER].min
        return unless first

        Instrumentation.emit("warn", "outbox_suspended",
                             "outbox: NATS unavailable (#{reason}); events stay in the outbox for the relay")
      end

      private

      # This process's State.
      def state = ProcessState.current.outbox

      def insert(t, entries)
        status = !suspended? && t.has?("updated_at") ? PUBLISHING : PENDING
        now = Time.now
        columns = INSERTED_COLUMNS.select { |c| t.has?(c) }
        rows = entries.map do |e|
          e.status = status
          { "event_id" => e.event_id, "subject" => e.subject, "payload" => e.json, "headers" => headers_json(e), "status" => status,
            "attempts" => 0, "enqueued_at" => now, "created_at" => now, "updated_at" => now }
        end
        conn = t.connection
        if entries.size == 1
          entries[0].id = conn.insert(t.insert_sql(rows, columns), "JetstreamBridge outbox", t.primary_key)
        elsif t.returning?
          returned = conn.exec_query("#{t.insert_sql(rows, columns)} RETURNING #{t.q(t.primary_key)}, #{t.q('event_id')}",
                                     "JetstreamBridge outbox").rows
          ids = returned.to_h { |id, event_id| [event_id, id] }
          entries.each { |e| e.id = ids[e.event_id] }
        else
          entries.each_with_index do |e, i|
            e.id = conn.insert(t.insert_sql([rows[i]], columns), "JetstreamBridge outbox", t.primary_key)
          end
        end
      end

      # The headers column: Nats-Msg-Id and the event's custom headers, as JSON.
      def headers_json(entry)
        return JSON.generate({ "Nats-Msg-Id" => entry.event_id }.merge(entry.headers)) if entry.headers

        "{\"Nats-Msg-Id\":#{JSON.generate(entry.event_id)}}"
      end

      # Custom headers need the headers column (a custom outbox table may lack it): they
      # would be lost when the relay sends the row.
      def check_headers_column!(t, events)
        return if t.has?("headers") || events.none?(&:headers)

        raise ConfigurationError, "outbox table #{t.name} has no headers column: events with headers cannot be kept in it"
      end

      # An event the server would refuse whatever happens is refused now, before its row is
      # written, by the rule a publish applies before sending: headers over 64 KB always,
      # headers and body over max_payload when connected (so the server's is known).
      def check_size!(entries)
        limit = max_payload
        entries.each { |e| Native.check_message_size(e.event_id, e.json.bytesize, e.headers, limit) }
      rescue ArgumentError, PayloadTooLargeError => e
        raise e.exception("#{e.message}: not written to the outbox")
      end

      def max_payload
        return nil unless Connection.connected?

        client = Connection.client
        s = state
        cached = s.max_payload
        return cached[1] if cached && cached[0].equal?(client)

        limit = client.server_info["max_payload"].to_i
        limit = nil unless limit.positive?
        s.max_payload = [client, limit]
        limit
      rescue Error
        nil
      end

      def next_seq
        s = state
        s.seq_mutex.synchronize { s.seq += 1 }
      end

      def after_commit_for(conn, t)
        txn = conn.current_transaction
        after_commit = state.after_commit
        existing = after_commit[txn]
        return existing if existing

        callback = AfterCommit.new(t)
        conn.add_transaction_record(callback)
        after_commit[txn] = callback
      end

      # Sends the entries' events, a row's failure its own (one too large fails alone); a
      # Native::BatchOutcome.
      def publish(entries)
        config = JetstreamBridge.config
        Connection.client.publish_events(entries.map(&:built), Event.defaults(config), config.publish_batch_window, false)
      end

      # Connected and not paused; connects on first use.
      def deliverable?
        return false if suspended?
        return true if Connection.client.connected?

        suspend!("not connected")
        false
      rescue Error => e
        suspend!("#{e.class}: #{e.message}")
        false
      end

      # Rows written as publishing that will not be published now go back to pending.
      def release(t, entries)
        publishing = entries.select { |e| e.status == PUBLISHING }
        update(t, publishing, { "status" => PENDING, "updated_at" => Time.now })
      end

      def update(t, entries, values)
        return if entries.empty?

        by_id = entries.all?(&:id)
        where = by_id ? t.ids_in(entries.map(&:id)) : "#{t.q('event_id')} IN (#{entries.map { |e| t.quote(e.event_id) }.join(', ')})"
        t.connection.exec_update("UPDATE #{t.quoted_table} SET #{t.assignments(values)} WHERE #{where}",
                                 "JetstreamBridge outbox")
      end

      # A failed row's new status (`error`: its error class): dead for an error no retry
      # fixes, or once it has used its attempts (the count includes this one) for anything
      # but NATS being unreachable: an outage, however long, never kills a row.
      def failed_status(t, error)
        return DEAD if FINAL_ERRORS.any? { |final| error <= final }
        return FAILED if transport_error?(error) || !t.has?("attempts")

        max = Integer(JetstreamBridge.config.outbox_max_attempts)
        t.raw("CASE WHEN COALESCE(#{t.q('attempts')}, 0) + 1 >= #{max} THEN #{t.quote(DEAD)} ELSE #{t.quote(FAILED)} END")
      end

      # `error`: an error class.
      def transport_error?(error)
        error <= ConnectionError || error <= PublishTimeoutError
      end
    end
  end
end
