# frozen_string_literal: true

require "jetstream_bridge/testing/rspec"
require_relative "../support/active_record_db"
require_relative "../support/child_ruby"

# Test mode as an app's test suite uses it, with the bridge pointed at a port where no
# server listens: nothing may connect, and every call must return at once.
RSpec.describe JetstreamBridge::Testing do
  let(:testing) { described_class }
  let(:closed_port) { NatsServer.free_ports(1).first }

  before do
    configure_bridge(server: "nats://127.0.0.1:#{closed_port}", connect_timeout: "5s", max_deliver: 3)
    testing.clear!
  end

  after do
    testing.real!
    testing.unhandle
    testing.clear!
  end

  describe ".fake!" do
    it "records what publish and publish_batch would send and returns as they would, with no connection or thread" do
      threads_before = Thread.list
      testing.fake!
      seconds = elapsed do
        expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1, name: "Zoë" }, headers: { "X-Tenant" => "acme" })).to be(true)
        expect(JetstreamBridge.publish(event_type: "user.updated", payload: { id: 1 })).to be(true)
        result = JetstreamBridge.publish_batch([{ event_type: "user.deleted", payload: { id: 2 } }, { event_type: "user.deleted", payload: { id: 3 } }])
        expect(result).to be_success
        expect(result.published).to eq(2)
        expect(result.event_ids.size).to eq(2)
      end
      expect(seconds).to be < 0.5

      first, second, *batch = testing.published
      expect(first.subject).to eq(JetstreamBridge.config.source_subject)
      expect(first.envelope).to include("event_type" => "user.created", "resource_type" => "user", "resource_id" => "1",
                                        "producer" => "app", "schema_version" => 1, "payload" => { "id" => 1, "name" => "Zoë" })
      expect(first.headers).to eq("Nats-Msg-Id" => first.event_id, "X-Tenant" => "acme")
      expect(second.event_type).to eq("user.updated")
      expect(batch.map(&:payload)).to eq([{ "id" => 2 }, { "id" => 3 }])
      expect(JetstreamBridge::Connection.current_client).to be_nil
      expect(Thread.list - threads_before).to be_empty
    end

    it "still refuses bad input as publish does" do
      testing.fake!
      expect { JetstreamBridge.publish(payload: {}) }.to raise_error(ArgumentError, /event_type is required/)
      expect { JetstreamBridge.publish(event_type: "a.b", headers: { "Nats-Expected-Stream" => "x" }) }
        .to raise_error(ArgumentError, /Nats-Expected-Stream is reserved/)
      expect(testing.published).to be_empty
    end

    it "restores the previous mode after a block, and real! sends for real again" do
      testing.fake! do
        expect(testing.mode).to eq(:fake)
        testing.inline! { expect(testing.mode).to eq(:inline) }
        expect(testing.mode).to eq(:fake)
      end
      expect(testing.mode).to eq(:real)
      expect(JetstreamBridge::Publisher.sink).to be_nil
      expect { JetstreamBridge.publish(event_type: "user.created", payload: {}) }.to raise_error(JetstreamBridge::ConnectionError)
    end

    it "records a publish made in a signal handler, as a real one is sent from there" do
      testing.fake!
      outcome = in_signal_handler { JetstreamBridge.publish(event_type: "shutdown.notice", payload: {}, event_id: "from-trap") }
      expect(outcome).to be(true)
      expect(testing.published.map(&:event_id)).to eq(["from-trap"])
    end

    it "clear! empties the records" do
      testing.fake! { JetstreamBridge.publish(event_type: "user.created", payload: {}) }
      expect(testing.published.size).to eq(1)
      testing.clear!
      expect(testing.published).to be_empty
    end

    context "with use_outbox (SQLite)" do
      before do
        ActiveRecordDb.sqlite.activate!.truncate!
        JetstreamBridge.configure(use_outbox: true)
        testing.fake!
      end

      it "refuses a publish from a signal handler as the outbox does" do
        outcome = in_signal_handler { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }) }
        expect(outcome).to be_a(JetstreamBridge::Error)
        expect(outcome.message).to match(/use_outbox cannot run in a signal handler/)
        expect(testing.published).to be_empty
      end

      it "records an event published in a transaction when it commits, and never one rolled back" do
        ActiveRecord::Base.transaction do
          JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })
          expect(testing.published).to be_empty # not before the commit
        end
        expect(testing.published.map(&:payload)).to eq([{ "id" => 1 }])

        ActiveRecord::Base.transaction do
          JetstreamBridge.publish(event_type: "user.created", payload: { id: 2 })
          raise ActiveRecord::Rollback
        end
        ActiveRecord::Base.transaction do
          JetstreamBridge.publish(event_type: "user.created", payload: { id: 3 })
          ActiveRecord::Base.transaction(requires_new: true) do
            JetstreamBridge.publish(event_type: "user.created", payload: { id: 4 })
            raise ActiveRecord::Rollback
          end
        end
        expect(testing.published.map(&:payload)).to eq([{ "id" => 1 }, { "id" => 3 }])
        expect(JetstreamBridge::OutboxEvent.count).to eq(0) # test mode writes no outbox row
      end

      it "records at once outside a transaction" do
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 9 })
        expect(testing.published.map(&:payload)).to eq([{ "id" => 9 }])
      end
    end
  end

  describe ".inline!" do
    it "refuses a handler that cannot take (event) or (event, subject, deliveries), as subscribe does" do
      expect { testing.handle(->(event, subject) { [event, subject] }) }
        .to raise_error(ArgumentError, /\Ahandle: the handler's call\(event, subject\) cannot be called/)
      expect { testing.deliver(->(event, subject) { [event, subject] }, event_type: "user.created", payload: {}) }
        .to raise_error(ArgumentError, /\Adeliver: the handler's call\(event, subject\)/)
    end

    it "hands each event to the registered handlers through the middleware, with its context" do
      seen = []
      stamp = Class.new do
        define_method(:initialize) { |tag| @tag = tag }
        define_method(:call) do |event, context, &handler|
          seen << [@tag, event["event_type"], context.headers["X-Tenant"]]
          handler.call
        end
      end
      JetstreamBridge.config.consumer_middleware.use(stamp, :outer)
      testing.handle { |event, subject, deliveries| seen << [:handler, event["payload"], subject, deliveries, JetstreamBridge::MessageContext.current.event_id] }
      testing.inline!
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "e-1", headers: { "X-Tenant" => "acme" })
      expect(seen).to eq([[:outer, "user.created", "acme"], [:handler, { "id" => 1 }, JetstreamBridge.config.source_subject, 1, "e-1"]])
      expect(testing.published.size).to eq(1)
    end

    it "redelivers a failing event up to max_deliver and records its dead letter; an unrecoverable error at once" do
      JetstreamBridge.configure(use_dlq: true)
      calls = Hash.new(0)
      testing.handle do |event, _subject, _deliveries|
        calls[event["event_id"]] += 1
        raise IOError, "down" if event["event_id"] == "flaky"
        raise ArgumentError, "bad" if event["event_id"] == "bad"
      end
      testing.inline! do
        %w[flaky bad fine].each { |id| JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: id) }
      end
      expect(calls).to eq("flaky" => 3, "bad" => 1, "fine" => 1)
      letters = testing.dead_letters.to_h { |l| [l.event["event_id"], [l.outcome, l.reason, l.error_class]] }
      expect(letters).to eq("flaky" => [:dead_letter, "max_deliver", "IOError"], "bad" => [:dead_letter, "unrecoverable", "ArgumentError"])
    end

    it "skips an event the inbox processed already (SQLite)" do
      ActiveRecordDb.sqlite.activate!.truncate!
      JetstreamBridge.configure(use_inbox: true)
      handled = []
      testing.handle { |event, *| handled << event["event_id"] }
      testing.inline! do
        2.times { JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "once") }
      end
      expect(handled).to eq(["once"])
      expect(JetstreamBridge::InboxEvent.where(event_id: "once").count).to eq(1)
    end
  end

  describe ".deliver" do
    it "runs a handler on an envelope built as publish builds it and returns the outcome" do
      received = nil
      handler = lambda do |event, subject, deliveries, context|
        received = [event, subject, deliveries, context.consumer_name, context.headers["X-Tenant"]]
        raise IOError, "retry me" if event["payload"]["fail"]
      end
      expect(testing.deliver(handler, event_type: "user.created", payload: { id: 5 }, headers: { "X-Tenant" => "t" })).to eq(:ack)
      event, subject, deliveries, consumer, tenant = received
      expect(event).to include("event_type" => "user.created", "resource_id" => "5", "payload" => { "id" => 5 })
      expect([subject, deliveries, consumer, tenant]).to eq([JetstreamBridge.config.destination_subject, 1, JetstreamBridge.config.durable_name, "t"])
      expect(testing.deliver(handler, event_type: "user.created", payload: { fail: true })).to eq(:nak)
      expect(testing.deliver(handler, event_type: "user.created", payload: { fail: true }, deliveries: 3)).to eq(:term)
      JetstreamBridge.configure(use_dlq: true)
      expect(testing.deliver(->(*) { raise ArgumentError, "no" }, event_type: "user.created", payload: {})).to eq(:dead_letter)
    end
  end

  describe "have_published_event" do
    it "matches by type, payload (symbol keys, nested matchers), subject and count" do
      publish_two = proc do
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 1, tags: %w[a b], profile: { city: "Kraków" } })
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 2 })
      end
      expect(&publish_two).to have_published_event("user.created").twice
      expect(&publish_two).to have_published_event("user.created").with_payload(id: 1, tags: %w[a b], profile: { city: "Kraków" }).once
      expect(&publish_two).to have_published_event("user.created").with_payload(hash_including(id: 2))
      expect(&publish_two).to have_published_event("user.created").with_subject(JetstreamBridge.config.source_subject)
      expect(&publish_two).not_to have_published_event("user.deleted")
      expect(testing.mode).to eq(:real) # the blocks ran in fake mode; nothing was sent
    end

    it "fails with a message listing what was published" do
      matcher = have_published_event("user.created").with_payload(id: 3)
      expect(matcher.matches?(proc { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }) })).to be(false)
      expect(matcher.failure_message).to eq(
        "expected the block to publish user.created with payload #{{ 'id' => 3 }.inspect}, but it published 0 matching. " \
        "Published:\n  - user.created on #{JetstreamBridge.config.source_subject} payload=#{{ 'id' => 1 }.inspect}" # Ruby 3.4 inspects {"id" => 1}
      )
      negated = have_published_event("user.created")
      expect(negated.matches?(proc { JetstreamBridge.publish(event_type: "user.created", payload: {}) })).to be(true)
      expect(negated.failure_message_when_negated).to start_with("expected the block not to publish user.created, but it did")
      expect(have_published_event("x").tap { |m| m.matches?(proc {}) }.failure_message).to end_with("nothing was published")
    end

    it "runs a :jetstream example in fake mode with empty records", :jetstream do
      expect(testing.mode).to eq(:fake)
      expect(testing.published).to be_empty
      JetstreamBridge.publish(event_type: "user.created", payload: {})
      expect(testing.published.size).to eq(1)
    end
  end

  describe "Minitest assertions" do
    it "pass and fail with readable messages in a real Minitest run" do
      test_file = File.join(Dir.mktmpdir("jb-minitest-"), "events_test.rb")
      File.write(test_file, <<~RUBY)
        require "minitest/autorun"
        require "jetstream_bridge/testing/minitest"
        JetstreamBridge.configure(app_name: "app", destination_app: "other", env: "test", nats_urls: "nats://127.0.0.1:#{closed_port}")

        class EventsTest < Minitest::Test
          def test_published
            assert_event_published("user.created", payload: { id: 1 }) { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }) }
            assert_no_events_published { 1 + 1 }
          end

          def test_mistaken
            assert_event_published("user.created", payload: { id: 2 }) { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }) }
          end
        end
      RUBY
      out, status = ChildRuby.capture(test_file)
      expect(status.exitstatus).to eq(1), out
      expect(out).to include("2 runs, 3 assertions, 1 failures, 0 errors")
      expect(out).to include("expected the block to publish user.created with payload #{{ 'id' => 2 }.inspect}, but it published 0 matching. Published:")
      expect(out).to include("- user.created on test.app.sync.other payload=#{{ 'id' => 1 }.inspect}")
    end
  end
end
