# frozen_string_literal: true

require_relative "worker"

module JetstreamBridge
  module Outbox
    # Publishes committed outbox rows on a background thread (outbox_delivery :background),
    # so publish returns once the transaction has committed, not after the ack. AfterCommit
    # pushes each commit's entries in commit order; the thread takes what is queued within
    # LINGER of the first (one wake per batch, not per commit: each wake costs the app's
    # threads a GVL hand-off) and sends it through Outbox.deliver, one publish_events call
    # per table (acks in flight, in that order), its rows marked by the Marker. A row not
    # delivered (NATS down, the process gone before the thread got to it) stays in the
    # table, publishing or pending, for the relay.
    #
    # One per process (ProcessState#delivery): a forked child makes its own, with its own
    # thread; reset! and the process's exit wait for it up to ProcessState::MARK_WAIT.
    class Delivery < Worker
      Item = Struct.new(:table, :entries) do
        def size = entries.size
      end
      # Commits queued at most: beyond, a commit waits for the thread (memory stays bounded
      # when NATS is slower than the database).
      MAX_QUEUED = 10_000
      # Seconds the thread waits after a first commit for more to join its publish (not
      # when it is behind: see Worker#collect).
      LINGER = 0.005
      # Rows sent together at most.
      MAX_ROWS = 5_000

      def initialize = super("outbox-delivery", max: MAX_QUEUED, linger: LINGER, max_rows: MAX_ROWS)

      # Queues entries of `table` (their rows committed) to be delivered.
      def push(table, entries)
        return if entries.empty?

        super(Item.new(table, entries))
      end

      # As Worker#stop; what is still queued after `timeout` is left to the relay.
      def stop(timeout)
        super
        @queue.clear
      end

      private

      # Consecutive items of one table are sent as one batch, in the order queued. On SQLite
      # the rows' UPDATEs (those not sent) wait for the write lock in Ruby, as the Marker's.
      def work(items)
        items.chunk_while { |a, b| a.table.equal?(b.table) }.each do |run|
          t = run.first.table
          entries = run.flat_map(&:entries)
          t.with_connection do
            t.sqlite? ? SqliteWrites.waiting_in_ruby(t) { Outbox.deliver(t, entries) } : Outbox.deliver(t, entries)
          end
        rescue StandardError => e # no database connection: Outbox.deliver rescues the rest
          Instrumentation.emit("error", "outbox_deliver_failed",
                               "outbox: #{entries&.size} event(s) left for the relay: #{e.class}: #{e.message}")
        end
      end
    end
  end
end
