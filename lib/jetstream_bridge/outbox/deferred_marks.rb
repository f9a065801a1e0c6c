# frozen_string_literal: true

module JetstreamBridge
  module Outbox
    # SQLite's stand-in for the Marker: marks of published rows wait here and are written
    # by the next outbox write, in its transaction (no commit of their own: on SQLite each
    # commit is a disk sync, and a row's mark would double the cost of a publish). A mark
    # older than MAX_AGE, or MAX_ROWS of them, is written by the publishing thread at its
    # next delivery; flush_marks and process exit write the rest. A mark lost (a crash)
    # leaves the row publishing: the relay sends it again after its lease, a duplicate the
    # server drops, as with the Marker.
    module DeferredMarks
      MAX_AGE = 1.0
      MAX_ROWS = 1_000

      @lock = Mutex.new
      @pid = nil
      @waiting = {} # Table => [entries, since]

      class << self
        def defer(t, entries)
          return if entries.empty?

          @lock.synchronize do
            own_process!
            list, since = @waiting[t] || [[], monotonic]
            @waiting[t] = [list.concat(entries), since]
          end
        end

        # Takes (and forgets) the marks waiting for table t; restore puts them back.
        def take(t) = @lock.synchronize { own_process! && (@waiting.delete(t)&.first || []) }

        def restore(t, entries) = defer(t, entries)

        # Writes the marks waiting for t when they are old or many (own statement).
        def write_due(t)
          due = @lock.synchronize do
            own_process!
            list, since = @waiting[t]
            list && (list.size >= MAX_ROWS || monotonic - since >= MAX_AGE)
          end
          write(t, take(t)) if due
        end

        # Writes every waiting mark now (Outbox.flush_marks, exit).
        def flush
          tables = @lock.synchronize { own_process! && @waiting.keys }
          tables.each { |t| write(t, take(t)) }
          true
        end

        def write(t, entries)
          Outbox.mark_sent(t, entries, Time.now) unless entries.empty?
        rescue StandardError => e
          Instrumentation.emit("warn", "outbox_mark_failed",
                               "outbox: #{entries.size} sent row(s) left publishing (the relay resends them): #{e.class}: #{e.message}")
        end

        private

        # A forked child must not write its parent's marks (the parent does).
        def own_process!
          return true if @pid == Native.pid

          @pid = Native.pid
          @waiting = {}
          at_exit { flush if @pid == Native.pid }
          true
        end

        def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end
