# frozen_string_literal: true

module JetstreamBridge
  # Everything the bridge holds for one process, in one object made on first use:
  # ProcessState.current. Its single fork check compares the PID it was made in with this
  # process's: a forked child (Puma, `rake jetstream_bridge:consume PROCESSES=n`, Rails
  # `parallelize`) gets a new one with every part fresh, as the parent's connection, threads
  # and registrations are not the child's. The parent's object is never touched in the
  # child (its native client leaks there by design: see Connection).
  #
  # Not here, on purpose: what the app set up, which a forked child keeps and reset! leaves
  # as it is unless said otherwise: JetstreamBridge.config (reset! restores its defaults),
  # Testing's mode with Publisher.sink and its records, the instrumenter's subscriptions,
  # Handling's framework wrappers (the Railtie's), and SqliteWrites' locks (a lock held by
  # a thread the child does not have is released by Ruby at fork; a fresh lock while a
  # thread holds the old one would let two writers in).
  class ProcessState
    # Longest wait, in seconds, for the outbox deliveries and marks queued when reset! runs
    # or the process exits.
    MARK_WAIT = 5

    # A Hash that threads share: read without a lock (a lookup under the GVL is safe, and an
    # entry is replaced, never changed), written under one.
    class Cache
      def initialize(by_identity: false)
        @hash = by_identity ? {}.compare_by_identity : {}
        @mutex = Mutex.new
      end

      def [](key) = @hash[key]

      def []=(key, value)
        @mutex.synchronize { @hash[key] = value }
      end

      # The key's value, made by the block (once, under the lock) when missing.
      def fetch(key)
        @hash[key] || @mutex.synchronize { @hash[key] ||= yield }
      end

      def clear
        @mutex.synchronize { @hash.clear }
      end
    end

    @current = nil
    @lock = Mutex.new # guards making @current

    class << self
      # This process's state; the first call in a process (a forked child's included) makes it.
      def current
        state = @current
        return state if state&.this_process?

        # A signal handler may not take a Mutex (ThreadError): the state is made on a
        # short-lived thread it waits for. Unless the signal interrupted this very thread
        # making it: that thread holds the lock, so no other is in there, and it is made here.
        return renew if @lock.owned?
        return Background.thread("process-state") { current }.value if Signals.trap_context?

        @lock.synchronize { renew }
      end

      # Registers, once, the at_exit hook that delivers and marks the outbox rows still
      # queued (up to MARK_WAIT; what is left is the relay's). A forked child inherits the
      # hook, which there drains the child's own.
      def flush_marks_at_exit
        @flush_marks_at_exit ||= at_exit { current.flush_marks(MARK_WAIT) }
      end

      private

      def renew
        @current = new unless @current&.this_process?
        @current
      end
    end

    attr_reader :connection, :consumers, :tables, :health, :outbox

    def initialize
      @pid = Native.pid # the process this state belongs to
      @lock = Mutex.new # guards making and dropping @marker and @delivery
      # The parts, each fresh in a new process and after reset!:
      @connection = Connection::State.new # native client, provisioning report, last error, events watcher
      @consumers = Consumer::Running.new # consumers whose run! is under way, a Supervisor worker's hooks
      @marker = nil # Outbox::Marker, marking published outbox rows sent, made on first use
      @delivery = nil # Outbox::Delivery, publishing committed rows (outbox_delivery :background), made on first use
      @tables = Cache.new(by_identity: true) # Table per ActiveRecord model (the columns detected)
      @health = Cache.new # health_check's stream and outbox figures of the last second
      @outbox = Outbox::State.new # the outbox's pause after NATS failures, row sequence, open transactions
    end

    # The fork check: false in a forked child, whose state this is not.
    def this_process? = @pid == Native.pid

    # The Outbox::Marker, made on first use (its thread starts with its first mark).
    def marker = @marker || made(:@marker) { Outbox::Marker.new }

    # The Outbox::Delivery, made on first use (its thread starts with its first rows).
    def delivery = @delivery || made(:@delivery) { Outbox::Delivery.new }

    # Waits until the rows queued for delivery so far are delivered, and the marks queued
    # so far (theirs included) are written; true when done within `timeout` seconds, or
    # when nothing was queued.
    def flush_marks(timeout)
      deadline = Background.monotonic + timeout
      delivery = @delivery
      return false if delivery && !delivery.flush(timeout)

      marker = @marker
      marker ? marker.flush([deadline - Background.monotonic, 0].max) : true
    end

    # Every part back to fresh (JetstreamBridge.reset!), in place but for the outbox's
    # counters, so that a thread holding a part goes on with the reset one. In this order:
    # the consumers stop first, as their handlers use the connection and may publish to the
    # outbox; then the delivery thread sends the rows queued and the marker writes the marks
    # queued (MARK_WAIT for both; rows left are the relay's), and their threads end.
    def reset!
      @consumers.stop_all
      @consumers.on_start = @consumers.on_stop = nil
      deadline = Background.monotonic + MARK_WAIT
      delivery = @lock.synchronize { @delivery.tap { @delivery = nil } }
      delivery&.stop(MARK_WAIT)
      # After the delivery: its marks go to this marker.
      marker = @lock.synchronize { @marker.tap { @marker = nil } }
      marker&.stop([deadline - Background.monotonic, 0].max)
      @connection.close!
      @tables.clear
      @health.clear
      @outbox = Outbox::State.new
    end

    private

    # The outbox part in `ivar`, made by the block under the lock when missing; the at_exit
    # hook that drains both is registered with the first.
    def made(ivar)
      @lock.synchronize do
        instance_variable_get(ivar) || begin
          ProcessState.flush_marks_at_exit
          instance_variable_set(ivar, yield)
        end
      end
    end
  end
end
