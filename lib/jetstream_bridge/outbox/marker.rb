# frozen_string_literal: true

require_relative "worker"

module JetstreamBridge
  module Outbox
    # Marks published outbox rows sent in the background, many rows per UPDATE, so a
    # publish does not wait for a second database commit; a mark is written within the
    # linger (LINGER to MAX_LINGER) of the publish (plus the wait for the database's write
    # lock), also when the app then goes idle. Losing a mark (a crash, a database error)
    # leaves the row publishing: the relay sends it again after its lease, a duplicate the
    # server drops within duplicate_window (and the consumers' inbox after it).
    #
    # On SQLite the UPDATE waits for the write lock in Ruby (SqliteWrites): an app thread
    # holding the lock in its transaction finishes meanwhile.
    #
    # One per process (ProcessState#marker): a forked child makes its own, with its own
    # thread (see Worker).
    class Marker < Worker
      Item = Struct.new(:table, :ids, :event_ids) do
        def size = ids.size
      end
      MAX_ROWS = 1_000
      # Seconds the marker waits after a first mark for more to join its UPDATE (one commit
      # for all of them, not one per publish): at least LINGER, and BUSY_FACTOR times as
      # long as the last UPDATE took, up to MAX_LINGER. So marking takes about a tenth of
      # the database's write time at most, even where a commit is slow (SQLite fsyncs its
      # journal, and every commit holds the file's only write lock meanwhile).
      LINGER = 0.02
      BUSY_FACTOR = 10
      MAX_LINGER = 0.5

      def initialize = super("outbox-marker", linger: LINGER, max_rows: MAX_ROWS)

      # Queues entries (published, with ids) of `table` to be marked sent.
      def push(table, entries)
        return if entries.empty?

        super(Item.new(table, entries.map(&:id), entries.map(&:event_id)))
      end

      private

      def work(items)
        started = Background.monotonic
        items.group_by(&:table).each do |table, group|
          entries = group.flat_map { |item| item.ids.zip(item.event_ids).map { |id, event_id| Entry.new(id, nil, event_id) } }
          table.with_connection { mark_sent(table, entries) }
        end
      rescue StandardError => e
        Instrumentation.emit("warn", "outbox_mark_failed",
                             "outbox: rows published but not marked sent (the relay sends them again after its lease): " \
                             "#{e.class}: #{e.message}")
      ensure
        @linger = ((Background.monotonic - started) * BUSY_FACTOR).clamp(LINGER, MAX_LINGER)
      end

      def mark_sent(table, entries)
        conn = table.connection if table.postgres?
        if conn && !conn.transaction_open? # an app's transaction (stopped: see Worker#push) keeps its own
          # Committed without waiting for the WAL flush: a mark lost to a database crash is
          # a mark lost (see above), and the app's own commits no longer queue behind a
          # second fsync per batch. Not on SQLite: with its default rollback journal, an
          # unsynced commit can corrupt the file on power loss.
          conn.transaction do
            conn.execute("SET LOCAL synchronous_commit TO OFF", "JetstreamBridge outbox")
            Outbox.mark_sent(table, entries, Time.now)
          end
        elsif table.sqlite?
          SqliteWrites.waiting_in_ruby(table) { Outbox.mark_sent(table, entries, Time.now) }
        else
          Outbox.mark_sent(table, entries, Time.now)
        end
      end
    end
  end
end
