# frozen_string_literal: true

module JetstreamBridge
  class Consumer
    # Runs handlers on `concurrency` Ruby threads for one consumer (subscribe(concurrency:
    # 8)). The calling thread fetches; messages wait in arrival (stream) order, and a
    # worker takes the first one whose key no other worker is handling: events with the
    # same key are handled one at a time, in order, while other keys go on in parallel.
    #
    # Threads: handlers that wait on the database or HTTP release the GVL, so N workers
    # overlap their waits. Middleware and the handler are shared by the workers and must
    # be thread-safe; each worker's inbox work is its own transaction.
    #
    # Memory: Ruby holds at most concurrency + batch_size messages (fetching waits for
    # room), on top of the core's prefetch bound.
    class Pool
      # Longest wait for room or for a message before the loops check for stop!.
      TICK = 0.25

      # failure: what partition_by raised for this message; it is settled as a handler failure.
      Entry = Struct.new(:message, :key, :failure)

      def initialize(consumer, native, processor, concurrency:, batch_size:, partition_by:, max_handler_time:)
        @consumer = consumer
        @native = native
        @processor = processor
        @concurrency = concurrency
        @batch_size = batch_size
        @partition_by = partition_by
        @max_handler_time = max_handler_time
        @lock = Mutex.new
        @changed = ConditionVariable.new
        @queue = []           # Entries not handed to a worker yet, in arrival order
        @busy = {}            # key => [the Entry holding it, when its handler started]
        @running = 0
        @failure = nil        # an Exception a handler raised past StandardError: ends run!
        @instrumented = false
      end

      # Fetches and dispatches until the consumer stops; then every worker finishes the
      # message in hand (acked) and what was never handed out goes back to the server.
      def run
        workers = Array.new(@concurrency) { |i| start_worker(i) }
        fetch until @consumer.stopped?
      ensure
        @consumer.stop! # also when run! was killed: the workers must end after their message
        @lock.synchronize { @changed.broadcast }
        workers&.each(&:join)
        give_back_queued
        raise @failure if @failure
      end

      # Gives the messages never handed to a worker back to the server at once; also from
      # another thread while workers are busy (Consumer#give_back_unstarted!).
      def give_back_queued
        queued = @lock.synchronize { @queue.slice!(0..) }
        queued.each { |entry| @native.nak(entry.message[0], nil) }
      end

      private

      def fetch
        room = @lock.synchronize do
          @changed.wait(@lock, TICK) while held >= limit && !@consumer.stopped?
          limit - held
        end
        return if room <= 0

        batch = @native.next_batch([room, @batch_size].min, WAIT_MS)
        return if batch.empty?

        @instrumented = Instrumentation.listening?(Processor::PROCESS_EVENT)
        entries = batch.map { |message| entry_for(message) }
        @lock.synchronize do
          @queue.concat(entries)
          @changed.broadcast
        end
        Connection.drain_events
      end

      def held = @queue.size + @running

      def limit = @concurrency + @batch_size

      def start_worker(index)
        Background.thread("worker-#{index}") do
          Running.handler_thread_of!(@consumer) # reset! in a handler here must not wait for this consumer
          work
        end
      end

      def work
        while (entry = take)
          begin
            @processor.process(entry.message, instrumented: @instrumented, failure: entry.failure) if @native.claim(entry.message[0])
          rescue Exception => e # rubocop:disable Lint/RescueException -- settled by the Processor; ends run!
            @failure ||= e
            @consumer.stop!
          ensure
            finish(entry)
          end
        end
      end

      # The next entry whose key is free, waiting for one; nil once stopping.
      def take
        @lock.synchronize do
          loop do
            return nil if @consumer.stopped?

            index = @queue.index { |entry| free?(entry.key) }
            if index
              entry = @queue.delete_at(index)
              @busy[entry.key] = [entry, Background.monotonic] unless entry.key.nil?
              @running += 1
              return entry
            end
            @changed.wait(@lock, TICK)
          end
        end
      end

      # A key is free when no handler has it, or when its handler is stuck past
      # max_handler_time: the core lets that message go (another worker gets it again),
      # so order for that key is lost anyway, and the events behind it must not wait.
      def free?(key)
        return true if key.nil?

        _holder, started = @busy[key]
        started.nil? || Background.monotonic - started >= @max_handler_time
      end

      def finish(entry)
        @lock.synchronize do
          # Only its holder releases a key: a handler that returns after it was stuck past
          # max_handler_time must not free the key that a later event of it holds now.
          @busy.delete(entry.key) if !entry.key.nil? && @busy[entry.key]&.first.equal?(entry)
          @running -= 1
          @changed.broadcast
        end
      end

      # The message with its ordering key: partition_by's value, else resource_type +
      # resource_id; nil (no order kept) for a body that is not an envelope or has neither.
      # Whatever partition_by raises (a ScriptError, exit too) stays with the message: the
      # worker settles it as that message's handler failure, and the rest of the batch is
      # handled (or given back, when the error ends run!).
      def entry_for(message)
        event = message[2]
        return Entry.new(message, nil) unless event.is_a?(Hash)
        return Entry.new(message, @partition_by.call(event)) if @partition_by

        type = event["resource_type"]
        id = event["resource_id"]
        Entry.new(message, type.nil? && id.nil? ? nil : "#{type}/#{id}")
      rescue Exception => e # rubocop:disable Lint/RescueException -- settled with its message
        Entry.new(message, nil, e)
      end
    end
  end
end
