# frozen_string_literal: true

module JetstreamBridge
  module Outbox
    # A queue worked through by one background thread, started with the first push, for the
    # outbox's work after a commit: Marker (marking rows sent) and Delivery (publishing
    # them). Items are worked in the order pushed, several at a time (`collect`); `flush`
    # waits for those pushed so far, `stop` too, then lets the thread end. Once stopped
    # (reset! ran since the caller took the worker), a push is worked here and now.
    #
    # One of each per process (ProcessState): a forked child makes its own, with its own thread.
    class Worker
      # `max`: items queued at most (a push waits for room), nil: no bound. `linger`:
      # seconds the thread waits after a first item for more to join it (one database
      # commit, one publish for all of them: each wake of the thread costs the app's
      # threads a GVL hand-off), up to `max_rows` rows (an item's `size`).
      def initialize(name, max: nil, linger: 0, max_rows: nil)
        @name = name
        @linger = linger
        @max_rows = max_rows
        @queue = max ? SizedQueue.new(max) : Queue.new # closed by stop
        @push_lock = Mutex.new # one push (or stop) at a time: items queue in push order
        @mutex = Mutex.new # guards the counts and the thread
        @worked = ConditionVariable.new
        @queued = 0
        @done = 0
        @thread = nil
      end

      # Queues `item` for the thread (waiting for room when the queue is full; the thread
      # never takes @push_lock); works it on the caller's thread once stopped.
      def push(item)
        queued = @push_lock.synchronize do
          next false if @queue.closed?

          @mutex.synchronize do
            @queued += 1
            start_thread unless @thread&.alive?
          end
          @queue << item
        end
        work([item]) unless queued
      end

      # Waits until every item queued so far is worked (or `timeout` seconds pass); true
      # when done.
      def flush(timeout)
        deadline = Background.monotonic + timeout
        @mutex.synchronize do
          target = @queued
          while @done < target
            left = deadline - Background.monotonic
            return false if left <= 0 || !@thread&.alive?

            @worked.wait(@mutex, left)
          end
        end
        true
      end

      # Works the items queued (waiting up to `timeout` seconds), then lets the thread end.
      def stop(timeout)
        flush(timeout)
        @push_lock.synchronize { @queue.close }
      end

      private

      def start_thread
        @thread = Background.thread(@name) { run }
      end

      # Until stop: Queue#pop answers nil once the queue is closed and empty.
      def run
        while (first = @queue.pop)
          items = collect(first)
          begin
            work(items)
          ensure
            @mutex.synchronize do
              @done += items.size
              @worked.broadcast
            end
          end
        end
      end

      # The items worked together: `first` and what joins it within the linger, up to
      # max_rows rows (everything queued, without a bound). No linger while more is queued:
      # the thread is behind already.
      def collect(first)
        items = [first]
        rows = first.size
        room = -> { @max_rows.nil? || rows < @max_rows }
        sleep @linger if @linger.positive? && room.call && @queue.empty?
        while room.call && (item = next_item)
          items << item
          rows += item.size
        end
        items
      end

      # The next queued item, or nil when none is waiting.
      def next_item
        @queue.pop(true)
      rescue ThreadError # empty (closed or not)
        nil
      end
    end
  end
end
