# frozen_string_literal: true

require_relative "outbox"

module JetstreamBridge
  # Sends the outbox rows that are not sent yet: pending (written while NATS was down),
  # failed once their retry delay has passed (Outbox.retry_delay: doubling with attempts,
  # capped), and publishing rows whose claim is older than `lease` (a relay or process that
  # died mid-send). Dead rows are left alone (Outbox.retry_dead revives them). Oldest first, in batches of `batch_size` with `window` acks in flight,
  # rows marked sent/failed in bulk.
  #
  #   relay = JetstreamBridge::OutboxRelay.new
  #   relay.flush            # every unsent row once; returns a Result
  #   relay.run!             # until stop! or SIGTERM/SIGINT (rake jetstream_bridge:outbox:relay)
  #   relay.start            # the same on a background thread; relay.stop to end it
  #
  # Several relays at once never send the same row concurrently: a row is claimed (status
  # publishing, updated_at now) before it is sent, with FOR UPDATE SKIP LOCKED on
  # PostgreSQL and a per-row compare-and-set elsewhere (SQLite). A relay that dies after
  # the ack but before marking the row sent leaves it publishing; it is sent again after
  # `lease` seconds, a duplicate the server drops while lease < duplicate_window (2m). A row
  # left publishing longer than duplicate_window (a relay run after an outage) is sent again
  # with a warning naming it: the stream may store it twice, and the consumers' inbox drops
  # the copy.
  class OutboxRelay
    # What a pass did; claimed_ids are the rows this relay claimed.
    Result = Struct.new(:claimed, :sent, :duplicates, :failed, :claimed_ids, keyword_init: true) do
      def self.empty = new(claimed: 0, sent: 0, duplicates: 0, failed: 0, claimed_ids: [])

      def add(other)
        self.claimed += other.claimed
        self.sent += other.sent
        self.duplicates += other.duplicates
        self.failed += other.failed
        claimed_ids.concat(other.claimed_ids)
        self
      end
    end

    DEFAULT_BATCH_SIZE = 500
    RELAY_EVENT = "outbox_relay.jetstream_bridge"
    DEFAULT_INTERVAL = 1.0
    DEFAULT_LEASE = 30

    attr_reader :batch_size, :interval, :lease, :totals

    # batch_size: rows claimed per batch; window: acks in flight (config.publish_batch_window);
    # interval: how long run! waits when there is nothing to send; lease: how long after
    # which a row left publishing is claimed again (below duplicate_window: see
    # check_lease!). Both are durations ("30s", "500ms") or seconds.
    def initialize(batch_size: DEFAULT_BATCH_SIZE, window: nil, interval: DEFAULT_INTERVAL, lease: DEFAULT_LEASE)
      @batch_size = Integer(batch_size)
      raise ArgumentError, "batch_size must be positive" unless @batch_size.positive?

      @window = window
      @interval = Native.duration_ms(interval, "interval") / 1000.0
      @lease = Native.duration_ms(lease, "lease") / 1000.0
      @stop = false
      @thread = nil
      @running = Mutex.new # held by the thread in run!
      @totals = Result.empty
      @nats_down = false
    end

    # One batch of at most batch_size rows (ids above after_id); returns a Result.
    # `due_only: false` takes failed rows whose retry delay has not passed yet too.
    def run_once(after_id: nil, due_only: true)
      return Result.empty unless nats_ready?
      return claim_and_send(after_id, due_only) unless Instrumentation.listening?(RELAY_EVENT)

      payload = { claimed: 0, sent: 0, duplicates: 0, failed: 0 }
      Instrumentation.instrument(RELAY_EVENT, payload) do
        claim_and_send(after_id, due_only).tap { |r| payload.merge!(claimed: r.claimed, sent: r.sent, duplicates: r.duplicates, failed: r.failed) }
      end
    end

    # Sends every row that is unsent (and due, unless `due_only: false`) when it is
    # reached, once each (a row that fails stays failed until its next turn). Returns the
    # totals.
    def flush(due_only: true)
      check_lease!
      total = Result.empty
      after = nil
      until @stop
        result = run_once(after_id: after, due_only: due_only)
        break if result.claimed.zero?

        total.add(result)
        after = result.claimed_ids.max
      end
      total
    end

    # Flushes, then waits `interval`, until stop! (or SIGTERM/SIGINT when on the main thread).
    # Raises Error, touching nothing, while this relay's run! is under way (two loops would
    # share its stop flag and totals; a second relay object is the way to run two).
    def run!
      check_lease!
      raise Error, "outbox relay is already running (run! on another thread); create another OutboxRelay to run two" unless @running.try_lock

      begin
        @stop = false
        Instrumentation.emit("info", "outbox_relay_started",
                             "outbox relay started (batch_size #{batch_size}, interval #{interval}s, lease #{lease}s)")
        Signals.stopping(self) do
          until @stop
            begin
              flush
            rescue StandardError => e
              Instrumentation.emit("error", "outbox_relay_failed", "outbox relay: #{e.class}: #{e.message}")
              ErrorReporter.report(e, { source: :outbox_relay })
            end
            pause(interval)
          end
        end
        Instrumentation.emit("info", "outbox_relay_stopped", "outbox relay stopped (#{@totals.sent} sent)")
      ensure
        @running.unlock
      end
      self
    end

    # run! on a background thread (for running the relay inside an app process).
    def start
      raise Error, "relay already started" if @thread&.alive?

      check_lease!

      @stop = false
      @thread = Background.thread("outbox-relay", report: true) { run! }
      self
    end

    # Ends run! after the batch in hand. Safe from a signal handler (only sets a flag).
    def stop!
      @stop = true
    end

    # stop! and wait for the background thread (start).
    def stop(timeout: 30)
      stop!
      @thread&.join(timeout)
      @thread = nil
      self
    end

    # False after NATS could not be reached (the relay waits and tries again).
    def nats_available?
      !@nats_down
    end

    def running?
      !@stop && (@thread.nil? || @thread.alive?)
    end

    private

    # Claims a batch, sends it, marks its rows; the Result.
    def claim_and_send(after_id, due_only)
      table = Outbox.table
      table.with_connection do
        entries = claim(table, after_id, due_only)
        return Result.empty if entries.empty?

        outcome = Connection.client.publish_events(entries.map(&:built), Event.defaults(JetstreamBridge.config), window,
                                                   false) # a row too large fails alone
        Outbox.mark(table, entries, outcome)
        result = summarize(entries, outcome)
        after_batch(result, outcome.failures)
        @totals.add(result)
        result
      end
    ensure
      Connection.drain_events
    end

    # A row left publishing is sent again after the lease; the server drops that copy as a
    # duplicate only while the first one is still inside duplicate_window. A lease as long
    # as the window would store a row that was sent, and then resent, twice.
    def check_lease!
      window = JetstreamBridge.config.duplicate_window_ms / 1000.0
      return if @lease < window

      raise ConfigurationError, "outbox relay lease (#{@lease}s) must be shorter than duplicate_window (#{window}s): " \
                                "a row resent after its lease would otherwise be stored twice"
    end

    def window
      @window || JetstreamBridge.config.publish_batch_window
    end

    # Claims up to batch_size rows: status publishing, updated_at now. Returns Entries, oldest first.
    def claim(table, after_id, due_only)
      now = Time.now
      condition = claimable(table, now, after_id, due_only)
      set = table.assignments("status" => Outbox::PUBLISHING, "updated_at" => now)
      conn = table.connection
      rows =
        if table.postgres?
          claim_skipping_locked(table, conn, condition, set, late_resend(table, now))
        else
          compare_and_set(table, conn, condition, set, late_resend(table, now))
        end
      rows.sort_by!(&:first)
      warn_late_resends(rows.select { |row| row[5].to_i == 1 })
      rows.map do |id, event_id, subject, payload, headers|
        Outbox::Entry.new(id, subject, event_id, body(payload), Outbox::PUBLISHING, nil, Outbox.custom_headers(headers))
      end
    end

    # The columns a claim reads, of `from` (a table or alias): id, event_id, subject,
    # payload, headers (NULL without the column).
    def claim_columns(table, from)
      columns = [table.primary_key, "event_id", "subject", "payload"].map { |c| "#{from}.#{table.q(c)}" }
      columns << (table.has?("headers") ? "#{from}.#{table.q('headers')}" : "NULL")
      columns.join(", ")
    end

    # 1 for a row left publishing longer than duplicate_window (as an SQL expression): its
    # first send may be stored already, and the server no longer drops a copy.
    def late_resend(table, now)
      return "0" unless table.has?("updated_at")

      cutoff = table.quote((now - (JetstreamBridge.config.duplicate_window_ms / 1000.0)).utc)
      "CASE WHEN #{table.q('status')} = #{table.quote(Outbox::PUBLISHING)} AND #{table.q('updated_at')} < #{cutoff} " \
        "THEN 1 ELSE 0 END"
    end

    # PostgreSQL: one statement; the CTE reads each row's late flag before the UPDATE.
    def claim_skipping_locked(table, conn, condition, set, late)
      pk = table.q(table.primary_key)
      conn.exec_query(<<~SQL.gsub(/\s+/, " ").strip, "JetstreamBridge outbox relay").rows
        WITH picked AS (
          SELECT #{pk} AS picked_id, #{late} AS late FROM #{table.quoted_table} WHERE #{condition}
          ORDER BY #{pk} LIMIT #{batch_size} FOR UPDATE SKIP LOCKED)
        UPDATE #{table.quoted_table} AS claimed SET #{set} FROM picked WHERE claimed.#{pk} = picked.picked_id
        RETURNING #{claim_columns(table, 'claimed')}, picked.late
      SQL
    end

    # Sending a row again after duplicate_window may store its event a second time: only
    # the consumers' inbox drops that copy. Named, so it can be traced.
    def warn_late_resends(rows)
      return if rows.empty?

      shown = rows.first(10).map { |id, event_id, *| "#{id} (#{event_id})" }.join(", ")
      Instrumentation.emit("warn", "outbox_late_resend",
                           "outbox relay: sending again #{rows.size} row(s) left publishing longer than duplicate_window " \
                           "(#{JetstreamBridge.config.duplicate_window_ms / 1000.0}s): #{shown}#{', ...' if rows.size > 10}; " \
                           "if their first send was stored, the stream stores them twice (the consumers' inbox drops the copy)",
                           ids: rows.map(&:first))
    end

    # Without SKIP LOCKED: read candidates, then claim each with an UPDATE that only
    # matches while the row is still claimable; a row another relay claimed first updates
    # nothing and is left to it. One transaction (one write lock on SQLite). When every
    # candidate was taken, the next ones are tried.
    def compare_and_set(table, conn, condition, set, late)
      pk = table.q(table.primary_key)
      after = nil
      loop do
        where = after.nil? ? condition : "#{condition} AND #{pk} > #{table.quote(after)}"
        candidates = conn.select_rows(
          "SELECT #{claim_columns(table, table.quoted_table)}, #{late} FROM #{table.quoted_table} " \
          "WHERE #{where} ORDER BY #{pk} LIMIT #{batch_size}",
          "JetstreamBridge outbox relay"
        )
        return [] if candidates.empty?

        claimed = table.model.transaction do
          candidates.select do |row|
            conn.exec_update("UPDATE #{table.quoted_table} SET #{set} WHERE #{pk} = #{table.quote(row[0])} AND #{condition}",
                             "JetstreamBridge outbox relay") == 1
          end
        end
        return claimed unless claimed.empty?

        after = candidates.last[0]
      end
    end

    def claimable(table, now, after_id, due_only)
      status = table.q("status")
      failed = due_only ? failed_and_due(table, now) : "#{status} = #{table.quote(Outbox::FAILED)}"
      states = "(#{status} = #{table.quote(Outbox::PENDING)} OR (#{failed}))"
      if table.has?("updated_at")
        stale = table.quote((now - lease).utc)
        states = "(#{states} OR (#{status} = #{table.quote(Outbox::PUBLISHING)} AND #{table.q('updated_at')} < #{stale}))"
      end
      after_id.nil? ? states : "#{states} AND #{table.q(table.primary_key)} > #{table.quote(after_id)}"
    end

    # Attempts after which the retry delay stops growing.
    DELAY_STEPS = (1..).find { |n| Outbox.retry_delay(n) >= Outbox::RETRY_MAX }

    # Failed rows whose retry delay has passed: one time bound per number of attempts, so
    # the SQL is the same on every database.
    def failed_and_due(table, now)
      failed = "#{table.q('status')} = #{table.quote(Outbox::FAILED)}"
      return failed unless table.has?("updated_at") && table.has?("attempts")

      attempts = "COALESCE(#{table.q('attempts')}, 0)"
      due = (1..DELAY_STEPS).map do |n|
        "(#{attempts} #{n == DELAY_STEPS ? '>=' : '='} #{n} AND #{table.q('updated_at')} < #{table.quote((now - Outbox.retry_delay(n)).utc)})"
      end
      "#{failed} AND (#{attempts} < 1 OR #{due.join(' OR ')})"
    end

    def body(payload)
      payload.is_a?(String) ? payload : JSON.generate(payload)
    end

    # `outcome`: Client#publish_events' for `entries`.
    def summarize(entries, outcome)
      sent = entries.size - outcome.failures.size
      Result.new(claimed: entries.size, sent: sent, duplicates: outcome.duplicates,
                 failed: entries.size - sent, claimed_ids: entries.map(&:id))
    end

    # `failures`: the Native::Failures of the batch.
    def after_batch(result, failures)
      Outbox.resume! if result.sent.positive?
      level = result.failed.positive? ? "warn" : "info"
      first_error = failures.first
      Instrumentation.emit(level, "outbox_relayed",
                           "outbox relay: #{result.sent} sent (#{result.duplicates} duplicates), #{result.failed} failed" \
                           "#{" (#{first_error.error_name}: #{first_error.message})" if first_error}",
                           claimed: result.claimed, sent: result.sent, failed: result.failed)
      return unless failures.any? { |f| f.error <= StreamNotFoundError }
      return unless JetstreamBridge.config.auto_provision

      Connection.ensure_topology!
    rescue Error => e
      Instrumentation.emit("warn", "outbox_relay_topology", "outbox relay could not ensure the stream: #{e.message}")
    end

    # Connected to NATS (connecting on first use); logs once per outage.
    def nats_ready?
      ready = Connection.client.connected?
      note_nats(ready, "not connected")
      ready
    rescue Error => e
      note_nats(false, "#{e.class}: #{e.message}")
      false
    end

    def note_nats(ready, reason)
      if !ready && !@nats_down
        Instrumentation.emit("warn", "outbox_relay_waiting", "outbox relay waiting for NATS (#{reason})")
      elsif ready && @nats_down
        Instrumentation.emit("info", "outbox_relay_resumed", "outbox relay: NATS is back")
      end
      @nats_down = !ready
    end

    def pause(seconds)
      deadline = Background.monotonic + seconds
      until @stop
        left = deadline - Background.monotonic
        break if left <= 0

        sleep([left, 0.05].min)
      end
    end
  end
end
