# frozen_string_literal: true

require "forwardable"

module JetstreamBridge
  class Consumer
    # The consumers whose run! is under way in this process, so that JetstreamBridge.reset!
    # can stop them before it closes their connection: left running, they would go on
    # calling the handler for prefetched messages whose acks go nowhere. One registry per
    # process (ProcessState#consumers): a forked child starts with none of its parent's.
    class Running
      # How long reset! waits for a running handler to finish (seconds).
      STOP_TIMEOUT = 30
      # Thread variable naming the consumer a Pool worker thread runs handlers for.
      HANDLER_OF = :jetstream_bridge_handler_of

      class << self
        extend Forwardable

        # This process's registry.
        def current = ProcessState.current.consumers

        def_delegators :current, :add, :remove, :on_start, :on_start=, :on_stop, :on_stop=, :give_back_unstarted!, :stop_all

        # Marks the calling thread as one of `consumer`'s handler threads (Pool's workers).
        def handler_thread_of!(consumer)
          Thread.current.thread_variable_set(HANDLER_OF, consumer)
        end
      end

      # How a Supervisor worker follows its consumer; procs called with no arguments.
      # on_start: on run!'s thread once the pull loop is up, before the first handler.
      # on_stop: by every stop!, often in a trap (so it must take no lock and not log).
      attr_accessor :on_start, :on_stop

      def initialize
        @consumers = {} # consumer => the thread in its run!
        @lock = Mutex.new
        @changed = ConditionVariable.new
        @on_start = nil
        @on_stop = nil
      end

      # Registers the consumer's run! on this thread. Raises ConsumerError when its run! is
      # already under way: two loops on one Consumer would share (and orphan) its pull loop.
      def add(consumer)
        @lock.synchronize do
          thread = @consumers[consumer]
          if thread&.alive?
            raise ConsumerError, "consumer #{consumer.durable_name} is already running (run! on #{thread.name || 'another thread'}): " \
                                 "one run! at a time per Consumer; subscribe again for another"
          end

          @consumers[consumer] = Thread.current
        end
      end

      def remove(consumer)
        @lock.synchronize do
          @consumers.delete(consumer)
          @changed.broadcast
        end
      end

      # Consumer#give_back_unstarted! for every consumer of this process (the process is
      # about to exit with handlers still running).
      def give_back_unstarted!
        mine.each do |consumer|
          consumer.give_back_unstarted!
        rescue StandardError => e
          Instrumentation.emit("warn", "give_back_failed", "consumer #{consumer.durable_name}: could not give messages back: #{e.class}: #{e.message}")
        end
      end

      # Stops every consumer of this process and waits until their run! has returned
      # (each finishes the handler in flight and gives its prefetched messages back),
      # except the one whose handler calls this (reset! from inside a handler, on run!'s
      # thread or a worker's): it waits for that very handler, so it is not waited for
      # and stops once its handlers in flight return. A handler still running after
      # STOP_TIMEOUT is logged and left to finish; no handler is called after that one.
      def stop_all
        caller_handles_for = Thread.current.thread_variable_get(HANDLER_OF)
        others = @lock.synchronize do
          @consumers.select! { |_, thread| thread.alive? }
          @consumers.each_key(&:stop!)
          @consumers.reject { |consumer, thread| thread == Thread.current || consumer.equal?(caller_handles_for) }.keys
        end
        wait_for(others)
      end

      private

      # The consumers whose run! is under way.
      def mine
        @lock.synchronize { @consumers.select { |_, thread| thread.alive? }.keys }
      end

      def wait_for(consumers)
        deadline = Background.monotonic + STOP_TIMEOUT
        @lock.synchronize do
          while (left = consumers.select { |c| @consumers.key?(c) }).any?
            remaining = deadline - Background.monotonic
            if remaining <= 0
              Instrumentation.emit("error", "consumer_stop_timeout",
                                   "reset!: #{left.size} consumer(s) still in a handler after #{STOP_TIMEOUT}s; closing their connection anyway")
              break
            end
            @changed.wait(@lock, remaining)
          end
        end
      end
    end
  end
end
