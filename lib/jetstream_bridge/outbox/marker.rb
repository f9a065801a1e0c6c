# frozen_string_literal: true

module JetstreamBridge
  module Outbox
    # Marks published outbox rows sent in the background, many rows per UPDATE, so a
    # publish does not wait for a second database commit; a mark is written within
    # LINGER of the publish (plus the wait for the database's write lock), also when the
    # app then goes idle. Losing a mark (a crash, a database error) leaves the row
    # publishing: the relay sends it again after its lease, a duplicate the server drops
    # within duplicate_window (and the consumers' inbox after it).
    #
    # On SQLite the UPDATE waits for the write lock in Ruby (SqliteWrites): an app thread
    # holding the lock in its transaction finishes meanwhile.
    #
    # One per process (ProcessState#marker): a forked child makes its own, with its own thread.
    class Marker
      Item = Struct.new(:table, :ids, :event_ids)
      MAX_ROWS = 1_000
      # Seconds the marker waits after a first mark for more to join its UPDATE (one commit
      # for all of them, not one per publish).
      LINGER = 0.02

      def initialize
        @queue = Queue.new # closed by stop
        @mutex = Mutex.new
        @written = ConditionVariable.new
        @queued = 0
        @done = 0
        @thread = nil
      end

      # Queues entries (published, with ids) of `table` to be marked sent. Once the marker
      # is stopped (reset! ran since the caller took it), they are marked here and now.
      def push(table, entries)
        return if entries.empty?

        item = Item.new(table, entries.map(&:id), entries.map(&:event_id))
        queued = @mutex.synchronize do
          next false if @queue.closed?

          @queued += 1
          start_thread unless @thread&.alive?
          @queue << item
        end
        write([item]) unless queued
      end

      # Waits until every mark queued so far is written (or `timeout` seconds pass); true
      # when done.
      def flush(timeout)
        deadline = Background.monotonic + timeout
        @mutex.synchronize do
          target = @queued
          while @done < target
            left = deadline - Background.monotonic
            return false if left <= 0 || !@thread&.alive?

            @written.wait(@mutex, left)
          end
        end
        true
      end

      # Writes the marks queued (waiting up to `timeout` seconds), then lets the thread end.
      def stop(timeout)
        flush(timeout)
        @mutex.synchronize { @queue.close }
      end

      private

      def start_thread
        @thread = Background.thread("outbox-marker") { run }
      end

      # Until stop: Queue#pop answers nil once the queue is closed and empty.
      def run
        while (first = @queue.pop)
          items = [first]
          rows = first.ids.size
          sleep LINGER if rows < MAX_ROWS
          while rows < MAX_ROWS && (item = next_item)
            items << item
            rows += item.ids.size
          end
          write(items)
          @mutex.synchronize do
            @done += items.size
            @written.broadcast
          end
        end
      end

      # The next queued item, or nil when none is waiting.
      def next_item
        @queue.pop(true)
      rescue ThreadError # empty (closed or not)
        nil
      end

      def write(items)
        items.group_by(&:table).each do |table, group|
          entries = group.flat_map { |item| item.ids.zip(item.event_ids).map { |id, event_id| Entry.new(id, nil, event_id) } }
          table.model.connection_pool.with_connection { mark_sent(table, entries) }
        end
      rescue StandardError => e
        Instrumentation.emit("warn", "outbox_mark_failed",
                             "outbox: rows published but not marked sent (the relay sends them again after its lease): " \
                             "#{e.class}: #{e.message}")
      end

      def mark_sent(table, entries)
        return Outbox.mark_sent(table, entries, Time.now) unless table.sqlite?

        SqliteWrites.waiting_in_ruby(table) { Outbox.mark_sent(table, entries, Time.now) }
      end
    end
  end
end
