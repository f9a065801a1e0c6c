# frozen_string_literal: true

require "json"
require "set"
require_relative "table"
require_relative "prune"

module JetstreamBridge
  # Idempotent inbox (config.use_inbox = true): consumer middleware (see Handling) that runs
  # each event's handler at most once to completion.
  #
  # The event is keyed by its event_id (the envelope's event_id, else the Nats-Msg-Id
  # header: a dead letter replayed has a Nats-Msg-Id of its own but is the same event), or
  # by (stream, stream_seq) when it has none. In ONE database transaction the
  # inbox row is written as processed, the handler runs, and both commit together: a crash
  # in between commits neither, so an event is never marked processed without its
  # handler's work, nor handled twice. A redelivered processed event is skipped (the
  # consumer acks it without calling the handler). When the handler raises, the
  # transaction rolls back, the row is recorded as failed (last_error, deliveries) in a
  # savepoint of its own, and the error goes on to the consumer, which NAKs the message for
  # a retry.
  class Inbox
    PROCESSED = "processed"
    FAILED = "failed"
    MAX_ERROR_LENGTH = 4000

    Key = Struct.new(:column_sql, :event_id)
    # What around_batch keeps for the batch it runs: its Table (resolved once, not per
    # event) and the rows write_batch inserted (key SQL => Key) whose handler has not run.
    Batch = Struct.new(:table, :written)
    # Thread-local: this thread's batches, by Inbox. A consumer's workers share one Inbox
    # and each runs batches of its own.
    BATCHES = :jetstream_bridge_inbox_batches

    # model: a model class or its name (config.inbox_model by default), resolved per message
    # so that a reloaded model class (development) is picked up.
    # Deletes `processed` rows processed more than `older_than` ("30d") ago, in batches;
    # yields the running total after each. Refuses a cutoff within the redelivery horizon
    # (an event still redeliverable whose row is gone would be handled twice). Never
    # touches a failed row. Returns the count.
    def self.prune(older_than:, model: nil, &progress)
      seconds = Prune.seconds(older_than)
      horizon = redelivery_horizon
      if seconds < horizon
        raise ArgumentError, "older_than (#{older_than}) is shorter than the #{horizon.round}s within which an event can " \
                             "still be delivered again (duplicate_window, or max_deliver x (ack_wait + the longest backoff)): " \
                             "its row would be gone and it would be handled twice"
      end
      t = new(model).table
      Prune.rows(t, status: PROCESSED, column: Prune.time_column(t, %w[processed_at updated_at created_at]),
                    older_than: older_than, &progress)
    end

    # Seconds after processing within which the same event may still arrive: a publish
    # retried within duplicate_window, or a redelivery (each ack_wait plus its backoff).
    def self.redelivery_horizon(config = JetstreamBridge.config)
      longest_backoff = config.backoff_ms.max.to_i
      [config.duplicate_window_ms, config.max_deliver * (config.ack_wait_ms + longest_backoff)].max / 1000.0
    end

    def initialize(model = nil)
      @model = model
      @warned = false
    end

    def model
      Table.resolve_model(@model || JetstreamBridge.config.inbox_model, "config.inbox_model")
    end

    def table
      t = Table.for(model)
      unless t.has?("event_id") || (t.has?("stream") && t.has?("stream_seq"))
        raise ConfigurationError, "inbox table #{t.name} needs an event_id column or stream and stream_seq columns"
      end

      t
    end

    # Middleware batch hook: the consumer runs a whole fetched batch inside one database
    # transaction and acks its messages after the commit. The batch's rows are written
    # first, as processed, with one multi-row INSERT (where the database can say which it
    # inserted: RETURNING); an event whose row this wrote then runs in a savepoint that
    # ActiveRecord only opens when the handler queries the database (a handler that does
    # not costs no round trip), and its row says failed if the handler raises. A row that
    # existed already (a redelivery) takes the one-event path. So a batch costs a commit
    # and an INSERT, not a commit, an INSERT and a savepoint per event.
    # Events per transaction at most. PostgreSQL slows down for every session while a
    # transaction holds more than 64 subtransactions (savepoints that wrote).
    BATCH_LIMIT = 50

    def batches? = true

    def batch_limit = BATCH_LIMIT

    # contexts: the batch's messages (MessageContext), when the consumer passes them.
    def around_batch(contexts = nil)
      t = table
      batches = (Thread.current[BATCHES] ||= {})
      t.exclusive do
        t.model.transaction do
          batch = batches[self] = Batch.new(t, {})
          batch.written = write_batch(t, contexts) if contexts && t.returning?
          yield
          forget_unhandled(batch)
          refuse_aborted_transaction(t)
        ensure
          batches.delete(self)
        end
      end
    end

    # The consumer acks the batch once around_batch returns: a COMMIT that PostgreSQL would
    # silently turn into a ROLLBACK must fail instead, so the batch is given back.
    def refuse_aborted_transaction(t)
      return unless t.transaction_aborted?

      raise ConsumerError, "the database aborted the inbox batch transaction (a statement failed outside a savepoint)"
    end

    # Middleware: yields to run the handler, unless the event was processed already. On
    # SQLite one event (or batch) of this process at a time (Table#exclusive): their
    # transactions would otherwise wait on each other's write lock holding the GVL.
    def call(_event, context)
      batch = Thread.current[BATCHES]&.[](self)
      t = batch ? batch.table : table
      t.exclusive { handle_once(t, batch, context) { yield } }
    end

    private

    def handle_once(t, batch, context)
      key = key_for(t, context)
      return unkeyed(context) { yield } unless key
      return run_written(t, key, context) { yield } if batch&.written&.delete(key.column_sql)

      duplicate = false
      now = Time.now
      # Inside a batch: a savepoint, so one failing event rolls back only its own work.
      t.model.transaction(requires_new: !batch.nil?) do
        unless insert_ignore(t, row(t, context, PROCESSED, now, nil)) == 1
          status = locked_status(t, key)
          if !t.has?("status") || status.nil? || status == PROCESSED
            duplicate = true
            next
          end
          t.connection.exec_update(
            "UPDATE #{t.quoted_table} SET #{t.assignments('status' => PROCESSED, 'processed_at' => now, 'updated_at' => now,
                                                          'deliveries' => context.deliveries, 'last_error' => nil)} " \
            "WHERE #{key.column_sql}", "JetstreamBridge inbox"
          )
        end
        yield
      end
      if duplicate
        context.duplicate!
        Instrumentation.emit("debug", "inbox_duplicate",
                             "inbox: #{describe(key, context)} already processed; acked without calling the handler")
      end
      nil
    rescue StandardError, ScriptError, SystemStackError => e
      record_failure(t, key, context, e) if key
      raise
    end

    # The rows of a batch's events, inserted as processed in one statement; returns those
    # inserted (key SQL => Key): the others existed already.
    def write_batch(t, contexts)
      now = Time.now
      keyed = contexts.filter_map { |c| (key = key_for(t, c)) && [key, c] }.uniq { |key, _| key.column_sql }
      return {} if keyed.empty?

      key_columns = t.has?("event_id") && keyed.all? { |key, _| key.event_id } ? %w[event_id] : nil
      return {} unless key_columns

      sql = "#{t.insert_sql(keyed.map { |_, c| row(t, c, PROCESSED, now, nil) })} ON CONFLICT DO NOTHING " \
            "RETURNING #{t.q('event_id')}"
      inserted = t.connection.exec_query(sql, "JetstreamBridge inbox").rows.flatten.to_set
      keyed.filter_map { |key, _| [key.column_sql, key] if inserted.include?(key.event_id) }.to_h
    end

    # An event whose row write_batch inserted: the handler in a savepoint of its own
    # (materialized only if it queries), the row marked failed if it raises.
    def run_written(t, key, context)
      t.model.transaction(requires_new: true) { yield }
      nil
    rescue StandardError, ScriptError, SystemStackError => e
      mark_written_failed(t, key, context, e)
      raise
    end

    def mark_written_failed(t, key, context, error)
      return delete_row(t, key) unless t.has?("status")

      message = fit_text(t, "last_error", Native.redact("#{error.class}: #{error.message}"))
      t.model.transaction(requires_new: true) do
        t.connection.exec_update(
          "UPDATE #{t.quoted_table} SET #{t.assignments('status' => FAILED, 'last_error' => message, 'processed_at' => nil,
                                                        'deliveries' => context.deliveries, 'updated_at' => Time.now)} " \
          "WHERE #{key.column_sql}", "JetstreamBridge inbox"
        )
      end
    rescue StandardError => e
      Instrumentation.emit("error", "inbox_record_failed",
                           "inbox: could not record the failure of #{describe(key, context)}: #{e.class}: #{e.message}")
    end

    # Rows written for events whose handler never ran (given back, dead-lettered, or the
    # batch stopped): they must not say processed.
    def forget_unhandled(batch)
      return if batch.written.empty?

      t = batch.table
      t.connection.exec_delete("DELETE FROM #{t.quoted_table} WHERE #{batch.written.keys.map { |sql| "(#{sql})" }.join(' OR ')}",
                               "JetstreamBridge inbox")
    end

    def delete_row(t, key)
      t.model.transaction(requires_new: true) do
        t.connection.exec_delete("DELETE FROM #{t.quoted_table} WHERE #{key.column_sql}", "JetstreamBridge inbox")
      end
    end

    # The key columns: event_id when the table has it and the event carries one, else
    # (stream, stream_seq).
    def key_for(t, context)
      event_id = event_id_of(context)
      if event_id && t.has?("event_id")
        Key.new("#{t.q('event_id')} = #{t.quote(event_id)}", event_id)
      elsif context.stream && context.stream_seq && t.has?("stream") && t.has?("stream_seq")
        Key.new("#{t.q('stream')} = #{t.quote(context.stream)} AND #{t.q('stream_seq')} = #{t.quote(context.stream_seq)}", event_id)
      end
    end

    def event_id_of(context)
      id = context.event["event_id"] if context.event.is_a?(Hash)
      id = context.msg_id if id.nil? || id.to_s.empty?
      id.nil? || id.to_s.empty? ? nil : id.to_s
    end

    def row(t, context, status, now, error)
      event_id = event_id_of(context)
      headers = event_id ? { "Nats-Msg-Id" => event_id } : {}
      t.present("event_id" => event_id, "subject" => context.subject, "payload" => json_for(t, "payload", context.event),
                "headers" => json_for(t, "headers", headers), "stream" => context.stream, "stream_seq" => context.stream_seq,
                "deliveries" => context.deliveries, "status" => status, "last_error" => error, "received_at" => now,
                "processed_at" => (now if status == PROCESSED), "created_at" => now, "updated_at" => now)
    end

    # Inserts the row unless one with the same key exists; returns the rows inserted (0 or 1).
    def insert_ignore(t, values)
      sql = t.insert_sql([values])
      sql = t.mysql? ? sql.sub(/\AINSERT /, "INSERT IGNORE ") : "#{sql} ON CONFLICT DO NOTHING"
      t.connection.exec_update(sql, "JetstreamBridge inbox")
    end

    # The existing row's status, locked until the transaction ends (PostgreSQL, MySQL; SQLite
    # holds its write lock since the insert attempt). A handler for the same event running
    # concurrently is waited for.
    def locked_status(t, key)
      column = t.has?("status") ? t.q("status") : "1"
      lock = t.postgres? || t.mysql? ? " FOR UPDATE" : ""
      t.connection.select_value("SELECT #{column} FROM #{t.quoted_table} WHERE #{key.column_sql}#{lock}",
                                "JetstreamBridge inbox")
    end

    # After the handler's transaction rolled back: the row says failed, with the error.
    def record_failure(t, key, context, error)
      return unless t.has?("status")

      # A savepoint: inside the batch transaction, a failing statement here would otherwise
      # abort it (PostgreSQL) and take the other events' work with it.
      t.model.transaction(requires_new: true) { write_failure(t, key, context, error) }
    rescue StandardError => e
      Instrumentation.emit("error", "inbox_record_failed",
                           "inbox: could not record the failure of #{describe(key, context)}: #{e.class}: #{e.message}")
    end

    def write_failure(t, key, context, error)
      now = Time.now
      # Redacted like the logs: a handler's error may quote a URL with credentials.
      message = fit_text(t, "last_error", Native.redact("#{error.class}: #{error.message}"))
      return if insert_ignore(t, row(t, context, FAILED, now, message)) == 1

      t.connection.exec_update(
        "UPDATE #{t.quoted_table} SET #{t.assignments('status' => FAILED, 'last_error' => message,
                                                      'deliveries' => context.deliveries, 'updated_at' => now)} " \
        "WHERE #{key.column_sql} AND #{t.q('status')} <> #{t.quote(PROCESSED)}", "JetstreamBridge inbox"
      )
    end

    # Text made to fit its column: valid UTF-8, no NUL (PostgreSQL text refuses it), no
    # longer than the column (or MAX_ERROR_LENGTH).
    def fit_text(t, column, text)
      limit = [t.limit_of(column), MAX_ERROR_LENGTH].compact.min
      text.encode(Encoding::UTF_8, invalid: :replace, undef: :replace).scrub.tr("\u0000", "\uFFFD")[0, limit]
    end

    # JSON for a json/jsonb/text column. jsonb refuses the escape \u0000: the inbox's copy of
    # such an event has U+FFFD in place of each NUL (the handler still gets the original).
    def json_for(t, column, value)
      json = JSON.generate(value)
      return json unless json.include?("\\u0000") && t.jsonb?(column)

      JSON.generate(without_nul(value))
    end

    def without_nul(value)
      case value
      when String then value.tr("\u0000", "\uFFFD")
      when Hash then value.to_h { |k, v| [without_nul(k), without_nul(v)] }
      when Array then value.map { |v| without_nul(v) }
      else value
      end
    end

    # No event id and no stream sequence: nothing to deduplicate on.
    def unkeyed(context)
      unless @warned
        @warned = true
        Instrumentation.emit("warn", "inbox_unkeyed",
                             "inbox: message on #{context.subject} has no event id or stream sequence; handled without the inbox")
      end
      yield
    end

    def describe(key, context)
      key.event_id ? "event #{key.event_id}" : "message #{context.stream}/#{context.stream_seq}"
    end
  end
end
