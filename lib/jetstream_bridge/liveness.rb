# frozen_string_literal: true

require "fileutils"

module JetstreamBridge
  # A file touched every few seconds while the process is healthy, for a Kubernetes exec
  # liveness probe (`rake jetstream_bridge:alive HEALTH_FILE=... MAX_AGE=30`): a process
  # that stops being healthy (NATS unreachable, a handler stuck past max_handler_time) or
  # hangs altogether stops touching it.
  #
  #   liveness = JetstreamBridge::Liveness.start("/tmp/jetstream_bridge.alive") { consumer_ok? }
  #   liveness.stop
  class Liveness
    # Seconds between touches (a probe's MAX_AGE should be several of these).
    INTERVAL = 5.0

    def self.start(path, interval: INTERVAL, &healthy)
      new(path, interval, healthy).tap(&:start)
    end

    # Whether the file exists and was touched within `max_age` seconds.
    def self.alive?(path, max_age)
      File.exist?(path) && Time.now - File.mtime(path) <= max_age
    end

    def initialize(path, interval, healthy)
      @path = path.to_s
      raise ArgumentError, "HEALTH_FILE is empty" if @path.strip.empty?

      @interval = interval
      @healthy = healthy
      @mutex = Mutex.new
      @wake = ConditionVariable.new
      @stopped = false
    end

    def start
      FileUtils.mkdir_p(File.dirname(@path))
      @thread = Background.thread("liveness", report: true) do
        loop do
          touch if healthy?
          break if stopped_after_interval?
        end
      end
      self
    end

    def stop
      @mutex.synchronize do
        @stopped = true
        @wake.signal
      end
      @thread&.join
    end

    private

    # Waits INTERVAL, or less when stopped meanwhile; true once stopped.
    def stopped_after_interval?
      @mutex.synchronize do
        @wake.wait(@mutex, @interval) unless @stopped
        @stopped
      end
    end

    def healthy?
      @healthy.call
    rescue StandardError
      false
    end

    def touch
      FileUtils.touch(@path)
    end
  end
end
