# frozen_string_literal: true

require "minitest"
require "jetstream_bridge/testing"
require_relative "expectation"

module JetstreamBridge
  module Testing
    # Minitest (and ActiveSupport::TestCase): included into Minitest::Test. The block runs
    # in fake mode when the bridge is in real mode.
    #
    #   assert_event_published("user.created", payload: { id: 1 }) { User.create!(...) }
    #   assert_no_events_published { ... }
    module MinitestAssertions
      # payload/subject/headers narrow the match; count: exactly that many (default: at least one).
      def assert_event_published(event_type, payload: nil, subject: nil, headers: nil, count: nil, &block)
        raise ArgumentError, "assert_event_published needs a block" unless block

        expectation = Expectation.new(event_type, payload: payload, subject: subject, headers: headers, count: count).run(block)
        assert(expectation.met?, expectation.failure_message)
        expectation.matching
      end

      def assert_no_events_published(&block)
        raise ArgumentError, "assert_no_events_published needs a block" unless block

        before = Testing.published.size
        Testing.fake? ? block.call : Testing.fake!(&block)
        extra = Testing.published.drop(before)
        assert(extra.empty?, "expected no events to be published, but got:\n#{extra.map { |e| "  - #{e}" }.join("\n")}")
      end
    end
  end
end

Minitest::Test.include(JetstreamBridge::Testing::MinitestAssertions)
