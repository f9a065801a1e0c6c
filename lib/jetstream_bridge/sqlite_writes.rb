# frozen_string_literal: true

require "monitor"

module JetstreamBridge
  # The gem's own writes to a SQLite database, from several threads of one process.
  #
  # SQLite has one writer at a time, and its Ruby driver (sqlite3 < 2) waits for the write
  # lock in C, holding the GVL: a thread waiting for a lock that another thread of the same
  # process holds between two statements (an open transaction) stops that thread too, so
  # the wait lasts the whole busy_timeout and ends in SQLite3::BusyException. So:
  # - the gem's write transactions (inbox) take a per-database lock first, in Ruby, where
  #   waiting releases the GVL: one writer at a time among them;
  # - a write that may meet the app's own transactions (the outbox marks) waits for the
  #   lock in a busy handler that sleeps in Ruby (releasing the GVL), so the app's
  #   transaction can finish meanwhile; the connection's busy_timeout is restored after.
  module SqliteWrites
    # Longest wait for the lock, in seconds, when the connection has no timeout setting.
    DEFAULT_WAIT = 5.0
    # Sleep between two tries of a busy handler (seconds).
    RETRY_SLEEP = 0.002

    @locks = {}
    @locks_mutex = Mutex.new

    module_function

    # Runs the block holding this process's write lock for t's database (re-entrant).
    def exclusive(t, &block)
      database = t.model.connection_db_config.database.to_s
      lock = @locks_mutex.synchronize { @locks[database] ||= Monitor.new }
      lock.synchronize(&block)
    end

    # Runs the block with t's SQLite connection waiting for the write lock in Ruby, up to
    # the database's `timeout` setting (milliseconds, as ActiveRecord reads it).
    def waiting_in_ruby(t)
      raw = t.connection.raw_connection
      timeout_ms = t.model.connection_db_config.configuration_hash[:timeout]&.to_i
      deadline = Background.monotonic + (timeout_ms ? timeout_ms / 1000.0 : DEFAULT_WAIT)
      raw.busy_handler { sleep(RETRY_SLEEP) && Background.monotonic < deadline }
      yield
    ensure
      restore_timeout(raw, timeout_ms) if raw
    end

    # What ActiveRecord set when it connected (sqlite3 2's handler also sleeps in Ruby).
    def restore_timeout(raw, timeout_ms)
      if timeout_ms.nil?
        raw.busy_handler(nil)
      elsif raw.respond_to?(:busy_handler_timeout=)
        raw.busy_handler_timeout = timeout_ms
      else
        raw.busy_timeout(timeout_ms)
      end
    end
  end
end
