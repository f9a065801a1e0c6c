# frozen_string_literal: true

module JetstreamBridge
  # Delays between publish attempts. A strategy answers #delay_for(attempt, error) with the
  # seconds to wait before attempt + 1, or nil to give up. Users may supply any such object.
  module RetryStrategy
    # Errors worth another attempt: the server may come back or the ack may still arrive.
    RETRYABLE = [ConnectionError, PublishTimeoutError, StreamNotFoundError].freeze
    # Subclasses of RETRYABLE that another attempt cannot fix: wrong credentials stay wrong
    # (and repeated failures can get a client locked out).
    FINAL = [AuthorizationError].freeze

    # Doubling delays: base, 2*base, 4*base ... capped at max_delay (seconds).
    class Exponential
      def initialize(base: 0.1, max_delay: 2.0)
        @base = base
        @max_delay = max_delay
      end

      def delay_for(attempt, _error)
        [@base * (2**(attempt - 1)), @max_delay].min
      end
    end

    # Growing delays: step, 2*step, 3*step ... capped at max_delay (seconds).
    class Linear
      def initialize(step: 0.2, max_delay: 2.0)
        @step = step
        @max_delay = max_delay
      end

      def delay_for(attempt, _error)
        [@step * attempt, @max_delay].min
      end
    end

    module_function

    def valid?(strategy)
      %i[exponential linear].include?(strategy) || strategy.respond_to?(:delay_for)
    end

    # The strategy object for a config value.
    def build(strategy)
      case strategy
      when :exponential then Exponential.new
      when :linear then Linear.new
      else strategy
      end
    end

    # How long a publish goes on while the stream exists but has no leader (a cluster
    # election takes a few seconds), beyond `attempts`: seconds since the first such failure.
    ELECTION_BUDGET = 15.0

    # The publish retry policy, the one place it lives (the README's "Publish retries"):
    # runs the block, retrying retryable errors up to `attempts` times in all, after the
    # strategy's delays; a stream without a leader is tried again at once, not counted,
    # for up to ELECTION_BUDGET seconds. Each attempt itself waits up to request_timeout
    # for the ack, sending again when the connection dropped (the core's resends).
    def with_retries(strategy, attempts)
      attempt = 1
      unavailable_since = nil
      begin
        yield attempt
      rescue StreamUnavailableError
        unavailable_since ||= Background.monotonic
        retry if Background.monotonic - unavailable_since < ELECTION_BUDGET
        raise
      rescue *RETRYABLE => e
        raise if attempt >= attempts || FINAL.any? { |klass| e.is_a?(klass) }

        delay = strategy.delay_for(attempt, e)
        raise if delay.nil?

        sleep(delay) if delay.positive?
        attempt += 1
        retry
      end
    end
  end
end
