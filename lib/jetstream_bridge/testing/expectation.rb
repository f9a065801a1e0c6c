# frozen_string_literal: true

module JetstreamBridge
  module Testing
    # What the RSpec matcher and the Minitest assertions check: the events a block
    # published of one event_type, optionally with a payload (a Hash compared with string
    # keys, or any object answering ===, like an RSpec matcher), a subject and a count.
    class Expectation
      attr_reader :event_type, :matching, :published

      def initialize(event_type, payload: nil, subject: nil, headers: nil, count: nil)
        @event_type = event_type.to_s
        @payload = payload.nil? ? nil : Expectation.stringify(payload)
        @subject = subject
        @headers = headers
        @count = count
        @matching = []
        @published = []
      end

      # Runs the block (in fake mode when the bridge is in real mode, so nothing is sent)
      # and keeps what it published.
      def run(block)
        before = Testing.published.size
        Testing.fake? ? block.call : Testing.fake! { block.call }
        @published = Testing.published.drop(before)
        @matching = @published.select { |event| matches?(event) }
        self
      end

      def met? = @count ? @matching.size == @count : !@matching.empty?

      def description
        text = "publish #{@event_type}"
        text += " #{@count == 1 ? 'once' : "exactly #{@count} times"}" if @count
        text += " with payload #{describe(@payload)}" unless @payload.nil?
        text += " on #{@subject}" if @subject
        text += " with headers #{describe(@headers)}" if @headers
        text
      end

      def failure_message
        "expected the block to #{description}, but it published #{@matching.size} matching#{listing}"
      end

      def failure_message_when_negated
        "expected the block not to #{description}, but it did#{listing}"
      end

      def self.stringify(value)
        case value
        when Hash then value.to_h { |k, v| [k.is_a?(Symbol) ? k.to_s : k, stringify(v)] }
        when Array then value.map { |v| stringify(v) }
        when Symbol then value.to_s
        else value
        end
      end

      def self.symbolize(value)
        case value
        when Hash then value.to_h { |k, v| [k.to_sym, symbolize(v)] }
        when Array then value.map { |v| symbolize(v) }
        else value
        end
      end

      private

      def matches?(event)
        event.event_type == @event_type &&
          (@payload.nil? || payload_matches?(event.payload)) &&
          (@subject.nil? || values_match?(@subject, event.subject)) &&
          (@headers.nil? || @headers.all? { |name, value| values_match?(value, event.headers[name.to_s]) })
      end

      # The payload has String keys (it is what the consumer decodes); a matcher given
      # Symbol keys (hash_including(id: 1)) is also tried against a Symbol-keyed copy.
      def payload_matches?(payload)
        values_match?(@payload, payload) || values_match?(@payload, Expectation.symbolize(payload))
      end

      # RSpec's fuzzy matching when loaded (matchers nested in Hashes); else a Hash, Array
      # or String must be equal, and anything else match with === (a Regexp, a Proc...).
      def values_match?(expected, actual)
        return RSpec::Support::FuzzyMatcher.values_match?(expected, actual) if defined?(RSpec::Support::FuzzyMatcher)
        return expected == actual if [Hash, Array, String].any? { |type| expected.is_a?(type) }

        expected === actual # rubocop:disable Style/CaseEquality
      end

      def describe(value) = value.respond_to?(:description) ? value.description : value.inspect

      def listing
        return ": nothing was published" if @published.empty?

        ". Published:\n#{@published.map { |e| "  - #{e}" }.join("\n")}"
      end
    end
  end
end
