# frozen_string_literal: true

require_relative "../support/consumer_helpers"
require_relative "../support/active_record_db"

# Consumer middleware, MessageContext and custom headers, with real consumers on the
# shared nats-server.
RSpec.describe "Consumer middleware, message context and headers" do
  include ConsumerHelpers

  after { stop_consumers }

  # Middleware that records its tag (and what it saw) in a shared log, then runs the rest.
  class Tagging
    def initialize(log, tag)
      @log = log
      @tag = tag
    end

    def call(event, context)
      @log << [@tag, event["event_id"], context.deliveries]
      yield
    end
  end

  let(:log) { Queue.new }

  def drain(queue) = Array.new(queue.size) { queue.pop }

  describe "the chain" do
    it "runs config middleware, then the consumer's own, around the handler, in registration order" do
      configure_bridge
      JetstreamBridge.config.consumer_middleware.use(Tagging, log, :first).use(Tagging, log, :second)
      id, = publish_incoming(1)
      consumer = JetstreamBridge::Consumer.new { |event, *| log << [:handler, event["event_id"], nil] }
      consumer.use(Tagging, log, :own)
      start_consumer(consumer)
      eventually { log.size == 4 }
      expect(drain(log)).to eq([[:first, id, 1], [:second, id, 1], [:own, id, 1], [:handler, id, nil]])
    end

    it "acks without calling the handler when a middleware does not yield" do
      configure_bridge
      skipper = Class.new { def call(_event, _context) = nil }
      JetstreamBridge.config.consumer_middleware.use(skipper)
      publish_incoming(3)
      _, calls = run_recording_consumer
      # Every message delivered and acked: a handler call would have come before its ack.
      eventually { (info = consumer_info) && info["num_pending"].zero? && info["num_ack_pending"].zero? && info["delivered"]["stream_seq"] == 3 }
      expect(calls.size).to eq(0)
    end

    it "NAKs with the backoff when a middleware raises, and the handler runs on the redelivery" do
      configure_bridge(backoff: %w[300ms])
      flaky = Class.new do
        def call(_event, context)
          raise IOError, "middleware down" if context.deliveries == 1

          yield
        end
      end
      JetstreamBridge.config.consumer_middleware.use(flaky)
      publish_incoming(1)
      started = monotonic
      _, calls = run_recording_consumer
      eventually { calls.size == 1 }
      expect(calls.to_a.first.deliveries).to eq(2)
      expect(calls.to_a.first.at - started).to be >= 0.3
      expect(log_output).to include("retry in 300ms: IOError: middleware down")
    end

    it "refuses what is not a middleware class, naming it" do
      middleware = JetstreamBridge.config.consumer_middleware
      expect { middleware.use(->(*) {}) }.to raise_error(ArgumentError, /middleware must be a class/)
      expect { middleware.use(Class.new) }.to raise_error(ArgumentError, /must define call\(event, context\)/)
    end

    context "with the inbox (SQLite)" do
      let(:db) { ActiveRecordDb.sqlite }

      # Writes a mark row for each message, in whatever transaction it runs in.
      class Marking
        def call(event, _context)
          ActiveRecord::Base.connection.execute("INSERT INTO mw_marks (event_id) VALUES (#{ActiveRecord::Base.connection.quote(event['event_id'])})")
          yield
        end
      end

      before do
        db.activate!.truncate!
        db.migrate_code("create_table(:mw_marks, if_not_exists: true) { |t| t.string :event_id }")
        db.connection.execute("DELETE FROM mw_marks")
      end

      def marks = db.connection.select_values("SELECT event_id FROM mw_marks")

      it "shares the inbox's transaction only when placed inside it (after use(JetstreamBridge::Inbox))" do
        configure_bridge(use_inbox: true, backoff: %w[50ms])
        JetstreamBridge.config.consumer_middleware.use(JetstreamBridge::Inbox).use(Marking)
        id, = publish_incoming(1)
        _, calls = run_recording_consumer { |call| raise IOError, "first try fails" if call.deliveries == 1 }
        eventually { calls.size == 2 && consumer_info["num_ack_pending"].zero? }
        expect(marks).to eq([id]) # the failed delivery's mark rolled back with the handler's work
      end

      it "keeps a middleware's writes outside the inbox transaction when it comes first (the default place of the inbox)" do
        configure_bridge(use_inbox: true, backoff: %w[50ms])
        JetstreamBridge.config.consumer_middleware.use(Marking)
        id, = publish_incoming(1)
        _, calls = run_recording_consumer { |call| raise IOError, "first try fails" if call.deliveries == 1 }
        eventually { calls.size == 2 && consumer_info["num_ack_pending"].zero? }
        expect(marks).to eq([id, id])
      end
    end
  end

  describe "MessageContext" do
    it "tells a handler and middleware the subject, deliveries, stream, sequence, ids, headers and consumer" do
      configure_bridge
      traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
      seen = Queue.new
      JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "ctx-1", subject: dest_subject,
                              headers: { "traceparent" => traceparent, "X-Tenant" => "acme" })
      consumer = JetstreamBridge::Consumer.new do |event, subject, deliveries|
        seen << [event["event_id"], subject, deliveries, JetstreamBridge::MessageContext.current]
      end
      start_consumer(consumer)
      eventually { seen.size == 1 }
      id, subject, deliveries, context = seen.pop
      expect([id, subject, deliveries]).to eq(["ctx-1", dest_subject, 1])
      expect(context).to have_attributes(subject: dest_subject, deliveries: 1, stream: stream_name, msg_id: "ctx-1",
                                         event_id: "ctx-1", event_type: "user.created", consumer_name: JetstreamBridge.config.durable_name)
      expect(context.stream_seq).to eq(1)
      expect(context.headers).to include("traceparent" => traceparent, "X-Tenant" => "acme", "Nats-Msg-Id" => "ctx-1")
      expect(JetstreamBridge::MessageContext.current).to be_nil # outside a handler
    end

    it "is the fourth argument of a handler whose call takes one; three-argument handlers get three" do
      configure_bridge
      seen = Queue.new
      four = Class.new do
        define_method(:initialize) { |out| @out = out }
        define_method(:call) { |_event, _subject, _deliveries, context| @out << [:four, context.stream_seq] }
      end
      publish_incoming(1)
      start_consumer(JetstreamBridge::Consumer.new(four.new(seen)))
      eventually { seen.size == 1 }
      expect(seen.pop).to eq([:four, 1])
      stop_consumers

      three = ->(event, subject, deliveries) { seen << [:three, event.class, subject.class, deliveries] }
      publish_incoming(1)
      start_consumer(JetstreamBridge::Consumer.new(three))
      eventually { seen.size == 1 }
      expect(seen.pop).to eq([:three, Hash, String, 1])
      stop_consumers

      # A Method object as the handler: its own parameters count (Method#call takes any).
      method_handler = four.new(seen).method(:call)
      publish_incoming(1)
      start_consumer(JetstreamBridge::Consumer.new(method_handler))
      eventually { seen.size == 1 }
      expect(seen.pop).to eq([:four, 3])
    end
  end

  describe "custom headers" do
    it "refuses a reserved, malformed or multi-line header before anything is sent, naming it" do
      configure_bridge
      publish = ->(headers) { JetstreamBridge.publish(event_type: "user.created", payload: {}, headers: headers) }
      expect { publish.call("Nats-Msg-Id" => "x") }.to raise_error(ArgumentError, /Nats-Msg-Id is reserved.*set event_id instead/)
      expect { publish.call("nats-expected-stream" => "x") }.to raise_error(ArgumentError, /nats-expected-stream is reserved/)
      expect { publish.call("X Tenant" => "x") }.to raise_error(ArgumentError, /header name "X Tenant" is invalid/)
      expect { publish.call("X-Tenant:" => "x") }.to raise_error(ArgumentError, /is invalid/)
      expect { publish.call("X-Tenant" => "a\r\nNats-Msg-Id: evil") }.to raise_error(ArgumentError, /X-Tenant contains a control character/)
      expect { publish.call("X-Tenant" => "\xFF".b) }.to raise_error(ArgumentError, /X-Tenant is not valid UTF-8/)
      expect { publish.call("X-Tenant" => nil) }.to raise_error(ArgumentError, /X-Tenant must be a String, got NilClass/)
      expect { publish.call(["X-Tenant"]) }.to raise_error(ArgumentError, /headers must be a Hash/)
      expect { JetstreamBridge.publish_batch([{ event_type: "a.b", headers: { "Nats-Rollup" => "all" } }]) }.to raise_error(ArgumentError, /reserved/)
      expect(JetstreamBridge.connected?).to be(false) # refused before connecting
    end

    it "travels with publish_batch, and through the outbox and the relay, to the consumer (SQLite)" do
      ActiveRecordDb.sqlite.activate!.truncate!
      configure_bridge
      JetstreamBridge.publish_batch([{ event_type: "user.created", payload: {}, event_id: "batch-1", subject: dest_subject,
                                       headers: { "X-Path" => "batch" } }])
      JetstreamBridge.configure(use_outbox: true)
      JetstreamBridge::Outbox.suspend!("spec: leave the row for the relay")
      JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "outbox-1", subject: dest_subject,
                              headers: { "X-Path" => "outbox", "tracestate" => "congo=t61rcWkgMzE" })
      kept = JetstreamBridge::OutboxEvent.find_by(event_id: "outbox-1").headers
      expect(kept.is_a?(String) ? JSON.parse(kept) : kept).to eq("Nats-Msg-Id" => "outbox-1", "X-Path" => "outbox", "tracestate" => "congo=t61rcWkgMzE")
      JetstreamBridge::Outbox.resume!
      JetstreamBridge::OutboxRelay.new.flush
      seen = Queue.new
      start_consumer(JetstreamBridge::Consumer.new { |event, *| seen << [event["event_id"], JetstreamBridge::MessageContext.current.headers] })
      eventually { seen.size == 2 }
      expect(drain(seen).to_h).to eq("batch-1" => { "Nats-Msg-Id" => "batch-1", "X-Path" => "batch" },
                                     "outbox-1" => { "Nats-Msg-Id" => "outbox-1", "X-Path" => "outbox", "tracestate" => "congo=t61rcWkgMzE" })
    end
  end
end
