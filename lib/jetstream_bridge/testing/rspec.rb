# frozen_string_literal: true

require "rspec/expectations"
require "jetstream_bridge/testing"
require_relative "expectation"

module JetstreamBridge
  module Testing
    # RSpec: `expect { ... }.to have_published_event("user.created").with_payload(id: 1).once`
    # (with_subject, with_headers, exactly(n), once; not_to works). The block runs in fake
    # mode when the bridge is in real mode. Tag an example (or group) `:jetstream` to run it
    # in fake mode with empty records, `jetstream: :inline` for inline mode.
    module RSpecMatchers
      class HavePublishedEvent
        def initialize(event_type)
          @event_type = event_type
          @options = {}
        end

        def with_payload(payload) = tap { @options[:payload] = payload }
        def with_subject(subject) = tap { @options[:subject] = subject }
        def with_headers(headers) = tap { @options[:headers] = headers }
        def exactly(count) = tap { @options[:count] = Integer(count) }
        def once = exactly(1)
        def twice = exactly(2)
        def times = self # exactly(2).times reads well

        def supports_block_expectations? = true
        def supports_value_expectations? = false

        def matches?(block)
          @expectation = Expectation.new(@event_type, **@options).run(block)
          @expectation.met?
        end

        def does_not_match?(block)
          !matches?(block)
        end

        def description = expectation.description
        def failure_message = @expectation.failure_message
        def failure_message_when_negated = @expectation.failure_message_when_negated

        private

        def expectation = @expectation || Expectation.new(@event_type, **@options)
      end

      def have_published_event(event_type) # rubocop:disable Naming/PredicateName
        HavePublishedEvent.new(event_type)
      end
    end
  end
end

RSpec.configure do |config|
  config.include JetstreamBridge::Testing::RSpecMatchers
  config.around(:each, :jetstream) do |example|
    mode = example.metadata[:jetstream] == :inline ? :inline : :fake
    JetstreamBridge::Testing.clear!
    JetstreamBridge::Testing.public_send(:"#{mode}!") { example.run }
  ensure
    JetstreamBridge::Testing.clear!
  end
end
