# frozen_string_literal: true

module JetstreamBridge
  class Consumer
    # The consume loop, at every concurrency. The calling thread fetches; messages wait in
    # arrival (stream) order, and a worker takes a unit of them whose keys no other worker
    # holds: events with the same key are handled one at a time, in order, while other
    # keys go on in parallel. With concurrency 1 the calling thread is the only worker
    # (it fetches, then handles what it fetched), so handlers run on run!'s thread.
    #
    # A worker handles a unit of messages in order. When a middleware handles batches (the
    # inbox: one database transaction), a unit is up to its batch_limit messages: the
    # whole fetched batch with one worker, about a 1/concurrency share of it with more;
    # it runs inside the batch hooks, its messages are acked once they complete (the
    # commit), and its keys are released then; if they fail, every message of the unit
    # goes back after the backoff. Without batch hooks a unit is one message (each key
    # waits only for its own), or with one worker all it fetched (each acked in turn).
    #
    # Threads: handlers that wait on the database or HTTP release the GVL, so N workers
    # overlap their waits. Middleware and the handler are shared by the workers and must
    # be thread-safe; what a middleware keeps for a batch is kept per thread (Inbox).
    #
    # Memory: Ruby holds at most concurrency + batch_size messages (fetching waits for
    # room), on top of the core's prefetch bound.
    class Pool
      # Longest wait for room or for a message before the loops check for stop!.
      TICK = 0.25
      # How long one wait for messages lasts before the loop checks again (milliseconds).
      WAIT_MS = 2_000

      # message: a Native::Message; failure: what partition_by raised for this message; it is
      # settled as a handler failure.
      Entry = Struct.new(:message, :key, :failure)
      # The entries a worker took, and the one whose handler runs now (nil between two).
      Unit = Struct.new(:entries, :in_hand)

      def initialize(consumer, native, processor, concurrency:, batch_size:, partition_by:, max_handler_time:)
        @consumer = consumer
        @native = native
        @processor = processor
        @settings = processor.settings
        @concurrency = concurrency
        @batch_size = batch_size
        @partition_by = partition_by
        @max_handler_time = max_handler_time
        @unit_limit = unit_limit
        @lock = Mutex.new
        @changed = ConditionVariable.new
        @queue = []           # Entries not handed to a worker yet, in arrival order
        @busy = {}            # key => [the Entry holding it, when its handler started (nil: not yet)]
        @units = []           # Units taken and not finished
        @failure = nil        # an Exception a handler raised past StandardError: ends run!
        @instrumented = false
      end

      # Fetches and dispatches until the consumer stops; then every worker finishes the
      # message in hand (acked) and what was never handed out goes back to the server.
      def run
        @concurrency == 1 ? run_on_this_thread : run_on_workers
      ensure
        give_back_queued
        raise @failure if @failure
      end

      # Gives the messages never handed to a worker back to the server at once; also from
      # another thread while workers are busy.
      def give_back_queued
        queued = @lock.synchronize { @queue.slice!(0..) }
        queued.each { |entry| @native.nak(entry.message.id, nil) }
      end

      # For a process about to exit with a handler still running (from another thread):
      # gives back the queue and every message of the units in progress but the ones in
      # hand (handled ones too: their unit will not complete).
      def give_back_unstarted
        give_back_queued
        taken = @lock.synchronize { @units.flat_map { |unit| unit.entries.reject { |e| e.equal?(unit.in_hand) } } }
        taken.each { |entry| @native.nak(entry.message.id, nil) }
      end

      private

      # Concurrency 1: fetch, handle what was fetched, again.
      def run_on_this_thread
        until @consumer.stopped?
          fetch
          while (unit = take(wait: false))
            run_unit(unit)
          end
        end
      end

      def run_on_workers
        workers = Array.new(@concurrency) { |i| start_worker(i) }
        fetch until @consumer.stopped?
      ensure
        @consumer.stop! # also when run! was killed: the workers must end after their message
        @lock.synchronize { @changed.broadcast }
        workers&.each(&:join)
      end

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

      # Messages per unit at most: with batch hooks their batch_limit; without, one (so
      # each key waits only for its own), or, with one worker, all it fetched.
      def unit_limit
        return @settings.batch_limit unless @settings.batch_wrappers.empty?

        @concurrency == 1 ? limit : 1
      end

      def held = @queue.size + @units.sum { |unit| unit.entries.size }

      def limit = @concurrency + @batch_size

      def start_worker(index)
        Background.thread("worker-#{index}") do
          Running.handler_thread_of!(@consumer) # reset! in a handler here must not wait for this consumer
          while (unit = take(wait: true))
            run_unit(unit)
          end
        end
      end

      # Handles a unit's messages, inside the batch hooks when there are any; then acks
      # them (a unit of batch hooks), releases their keys and makes room.
      def run_unit(unit)
        @settings.batch_wrappers.empty? ? handle_each(unit, nil) : handle_batch(unit)
        completed = true
      rescue Exception => e # rubocop:disable Lint/RescueException -- settled by the Processor; ends run!
        @failure ||= e
        @consumer.stop!
      ensure
        # Cut short (that Exception, or Thread#kill, which skips every rescue): what the
        # unit still holds goes back now, not after ack_wait (a settled message is a no-op).
        unit.entries.each { |entry| @native.nak(entry.message.id, nil) } unless completed
        finish(unit)
      end

      # One unit of work for the whole unit (the inbox: one database transaction).
      # Messages handled successfully are acked only after it completes; if it fails (the
      # commit), they are given back for redelivery.
      def handle_batch(unit)
        acks = []
        messages = unit.entries.map(&:message)
        contexts = messages.map { |message| @processor.batch_context(message) }
        Handling.around_batch(@settings.batch_wrappers, contexts) { handle_each(unit, acks) }
        acks.each { |id| @native.ack(id) }
      rescue StandardError => e
        # Every message of the unit goes back (settling a settled message is a no-op):
        # those handled but not committed, and those never reached when the unit of work
        # failed. After the backoff delay, not at once: a database that is down would
        # otherwise have them fetched and failed again in a tight loop.
        messages.each { |message| @native.nak(message.id, @settings.delay_ms(message.deliveries)) }
        Instrumentation.emit("error", "batch_failed",
                             "batch of #{messages.size} not committed (#{acks.size} handled), given back for redelivery: " \
                             "#{e.class}: #{e.message}")
        ErrorReporter.report(e, { source: :consumer_batch, consumer_name: @processor.consumer_name, messages: messages.size })
      end

      # The unit's messages in order; once stopping, the rest go back at once.
      def handle_each(unit, acks)
        unit.entries.each_with_index do |entry, index|
          if @consumer.stopped?
            unit.entries[index..].each { |unhandled| @native.nak(unhandled.message.id, nil) }
            break
          end
          handle(unit, entry, acks)
        end
      end

      def handle(unit, entry, acks)
        # Given back while an overdue handler held this worker: another worker has it now.
        return unless @native.claim(entry.message.id)

        started(unit, entry)
        @processor.process(entry.message, instrumented: @instrumented, failure: entry.failure, acks: acks)
      ensure
        unit.in_hand = nil
      end

      # The next unit of entries whose keys are free, waiting for one when `wait`; nil once
      # stopping (or, without `wait`, when none is ready).
      def take(wait:)
        @lock.synchronize do
          loop do
            return nil if @consumer.stopped?

            unit = next_unit
            return unit if unit
            return nil unless wait

            @changed.wait(@lock, TICK)
          end
        end
      end

      # Entries in arrival order whose key is free or already the unit's, up to the unit
      # size; the unit holds their keys until it is finished. Under the lock.
      def next_unit
        return take_first if @unit_limit == 1

        size = [(@queue.size / @concurrency.to_f).ceil, @unit_limit].min
        keys = {}
        taken = []
        @queue.each_with_index do |entry, index|
          break if taken.size >= size
          next unless entry.key.nil? || keys[entry.key] || free?(entry.key)

          keys[entry.key] = true unless entry.key.nil?
          @busy[entry.key] = [entry, nil] unless entry.key.nil? # the last of a key in the unit holds it
          taken << index
        end
        return nil if taken.empty?

        entries = taken.last == taken.size - 1 ? @queue.slice!(0, taken.size) : taken.reverse.map { |i| @queue.delete_at(i) }.reverse
        unit = Unit.new(entries, nil)
        @units << unit
        unit
      end

      # The first entry whose key is free, alone (several workers, no batch hooks).
      def take_first
        index = @queue.index { |entry| entry.key.nil? || free?(entry.key) }
        entry = index && @queue.delete_at(index) or return nil

        @busy[entry.key] = [entry, nil] unless entry.key.nil?
        unit = Unit.new([entry], nil)
        @units << unit
        unit
      end

      # A key is free when no unit holds it, or when the handler holding it is stuck past
      # max_handler_time: the core lets that message go (another worker gets it again), so
      # order for that key is lost anyway, and the events behind it must not wait.
      def free?(key)
        holder, started = @busy[key]
        return true if holder.nil?

        !started.nil? && Background.monotonic - started >= @max_handler_time
      end

      # The entry's handler starts now: the clock for its key's max_handler_time.
      def started(unit, entry)
        unit.in_hand = entry # one reference, read under the lock by give_back_unstarted
        return if entry.key.nil?

        @lock.synchronize do
          holder = @busy[entry.key]
          holder[1] = Background.monotonic if holder&.first.equal?(entry)
        end
      end

      def finish(unit)
        @lock.synchronize do
          # Only its holder releases a key: a handler that returns after it was stuck past
          # max_handler_time must not free the key that a later event of it holds now.
          unit.entries.each do |entry|
            @busy.delete(entry.key) if !entry.key.nil? && @busy[entry.key]&.first.equal?(entry)
          end
          @units.delete_if { |taken| taken.equal?(unit) }
          @changed.broadcast
        end
      end

      # The message with its ordering key: partition_by's value, else resource_type +
      # resource_id; nil (no order kept) for a body that is not an envelope or has neither.
      # Whatever partition_by raises (a ScriptError, exit too) stays with the message: the
      # worker settles it as that message's handler failure, and the rest of the batch is
      # handled (or given back, when the error ends run!).
      def entry_for(message)
        return Entry.new(message, nil) if @concurrency == 1 # one worker keeps arrival order anyway

        event = message.event
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
