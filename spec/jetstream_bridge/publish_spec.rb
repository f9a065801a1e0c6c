# frozen_string_literal: true

require "json"
require "time"
require_relative "../support/child_ruby"
require_relative "../support/raw_jetstream"
require_relative "../support/stderr_capture"

# Publishing against the shared real nats-server: the three documented forms, the subject
# override, the exact envelope and header read back from the stream, deduplication,
# errors, the retry strategy and the batch API.
RSpec.describe "JetstreamBridge.publish" do
  include StderrCapture

  let(:uuid_re) { /\A\h{8}-\h{4}-4\h{3}-[89ab]\h{3}-\h{12}\z/ }
  # The README's envelope, in its order.
  let(:envelope_keys) do
    %w[event_id schema_version event_type producer resource_type resource_id occurred_at trace_id payload]
  end

  before { configure_bridge }

  def message_count(stream = JetstreamBridge.config.stream_name)
    info = native_client.stream_info(stream)
    info ? JSON.parse(info).dig("state", "messages") : 0
  end

  # The only message in the bridge's stream: [subject, envelope Hash, headers, raw body].
  def only_message(stream = JetstreamBridge.config.stream_name)
    messages = stream_messages(stream)
    expect(messages.size).to eq(1), "expected one message in #{stream}, got #{messages.size}"
    subject, body, headers = messages.first
    [subject, JSON.parse(body), headers, body]
  end

  def expect_recent_utc(occurred_at)
    expect(occurred_at).to match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\z/)
    expect(Time.iso8601(occurred_at)).to be_within(10).of(Time.now)
  end

  def publish_subject = "#{bridge_env}.app.sync.other"

  # Lines of a child's script: the bridge on the shared server, and a USR2 handler that
  # publishes `event_id` and keeps the outcome (true, or the error) in `from_trap`.
  def trap_publisher_lines(event_id, logger)
    <<~RUBY
      JetstreamBridge.configure(nats_urls: "#{shared_server.url}", env: "#{bridge_env}", app_name: "app", destination_app: "other", logger: #{logger})
      from_trap = nil
      trap("USR2") { from_trap = (JetstreamBridge.publish(event_type: "shutdown.notice", payload: {}, event_id: "#{event_id}") rescue $!) }
    RUBY
  end

  # The output lines of a Ruby child running `script` with this lib; fails if it hangs.
  def ruby_child_lines(script, timeout: 30)
    output, = ChildRuby.capture("-e", script, timeout: timeout)
    output.lines.map(&:chomp)
  end

  # Each form twice: as the first call (Ruby builds the event, then connects) and once
  # connected (the core builds and sends it in one call, Client#publish_event/_events).
  { "as the first call" => false, "once connected" => true }.each do |mode, connected|
    context mode do
      before { JetstreamBridge.ensure_topology! if connected }

      describe "structured parameters" do
        it "stores the exact envelope in the documented key order with a Nats-Msg-Id header" do
          result = JetstreamBridge.publish(resource_type: "user", event_type: "created",
                                           payload: { id: 42, email: "ada@example.com" })
          expect(result).to be(true)

          subject, envelope, headers, body = only_message
          expect(subject).to eq(publish_subject)
          expect(envelope.keys).to eq(envelope_keys)
          expect(body).to start_with('{"event_id":')
          expect(envelope["event_id"]).to match(uuid_re)
          expect(envelope["trace_id"]).to match(/\A\h{16}\z/) # made when none is given
          expect(envelope).to include(
            "schema_version" => 1, "event_type" => "created", "producer" => "app",
            "resource_type" => "user", "resource_id" => "42",
            "payload" => { "id" => 42, "email" => "ada@example.com" }
          )
          expect_recent_utc(envelope["occurred_at"])
          expect(headers.keys).to include("Nats-Msg-Id")
          expect(headers["Nats-Msg-Id"]).to eq(envelope["event_id"])
        end

        it "takes resource_id from a string-keyed payload id" do
          JetstreamBridge.publish(resource_type: "user", event_type: "updated",
                                  payload: { "id" => "01H-abc", "name" => "Ada" })
          _, envelope, = only_message
          expect(envelope["resource_id"]).to eq("01H-abc")
          expect(envelope["payload"]).to eq("id" => "01H-abc", "name" => "Ada")
        end

        it "leaves resource_id null when the payload has no id" do
          JetstreamBridge.publish(resource_type: "user", event_type: "pinged", payload: { n: 1 })
          _, envelope, = only_message
          expect(envelope["resource_id"]).to be_nil
        end

        it "gives every event its own UUID" do
          3.times { JetstreamBridge.publish(resource_type: "user", event_type: "created", payload: {}) }
          ids = stream_messages.map { |_, body, headers| [JSON.parse(body)["event_id"], headers["Nats-Msg-Id"]] }
          expect(ids.map(&:first).uniq.size).to eq(3)
          ids.each do |id, header|
            expect(id).to match(uuid_re)
            expect(header).to eq(id)
          end
        end

        it "converts a Time occurred_at to ISO-8601 UTC" do
          time = Time.new(2025, 8, 13, 23, 0, 0, "+02:00")
          JetstreamBridge.publish(resource_type: "user", event_type: "created", payload: {}, occurred_at: time)
          _, envelope, = only_message
          expect(envelope["occurred_at"]).to start_with("2025-08-13T21:00:00").and end_with("Z")
          expect(Time.iso8601(envelope["occurred_at"])).to eq(time)
          expect(time.utc_offset).to eq(7200) # the caller's Time is not converted in place
        end

        it "round-trips a rich payload unchanged" do
          payload = { id: 1, name: "Ada Lovelace \u2713 \u65e5\u672c\u8a9e \u{1F680}", tags: %w[a b], nested: { ok: true, none: nil },
                      ratio: 0.125, big: 2**62, list: [1, [2, [3]]], quote: "\"'\\\n\t", sym: :value }
          JetstreamBridge.publish(event_type: "user.created", payload: payload)
          _, envelope, = only_message
          expect(envelope["payload"]).to eq(JSON.parse(JSON.generate(payload)))
          expect(envelope["payload"]["name"]).to eq("Ada Lovelace \u2713 \u65e5\u672c\u8a9e \u{1F680}")
          expect(envelope["payload"]["sym"]).to eq("value")
        end

        it "keeps trace_id" do
          JetstreamBridge.publish(resource_type: "payment", event_type: "processed",
                                  payload: { order_id: 7 }, trace_id: "req-123")
          _, envelope, = only_message
          expect(envelope["trace_id"]).to eq("req-123")
        end
      end

      describe "simplified hash (event_type with a dot)" do
        it "infers resource_type from event_type" do
          expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: "01H", email: "a@b.c" })).to be(true)
          _, envelope, headers = only_message
          expect(envelope.keys).to eq(envelope_keys)
          expect(envelope).to include("event_type" => "user.created", "resource_type" => "user",
                                      "resource_id" => "01H", "producer" => "app")
          expect(headers["Nats-Msg-Id"]).to eq(envelope["event_id"])
        end

        it "does not override an explicit resource_type" do
          JetstreamBridge.publish(event_type: "user.created", resource_type: "account", payload: {})
          _, envelope, = only_message
          expect(envelope["resource_type"]).to eq("account")
        end
      end

      describe "complete envelope" do
        it "keeps the given event_id, occurred_at, producer and trace_id" do
          JetstreamBridge.publish(event_type: "created", resource_type: "user",
                                  payload: { id: "01H", email: "ada@example.com" },
                                  event_id: "custom-event-id", occurred_at: "2025-08-13T21:00:00Z",
                                  producer: "custom-producer", trace_id: "abc123")
          subject, envelope, headers = only_message
          expect(subject).to eq(publish_subject)
          expect(envelope).to eq(
            "event_id" => "custom-event-id", "schema_version" => 1, "event_type" => "created",
            "producer" => "custom-producer", "resource_type" => "user", "resource_id" => "01H",
            "occurred_at" => "2025-08-13T21:00:00Z", "trace_id" => "abc123",
            "payload" => { "id" => "01H", "email" => "ada@example.com" }
          )
          expect(envelope.keys).to eq(envelope_keys)
          expect(headers["Nats-Msg-Id"]).to eq("custom-event-id")
        end

        it "accepts an envelope read back from the stream (string keys, schema_version 1)" do
          original = { "event_id" => "re-1", "schema_version" => 1, "event_type" => "created",
                       "producer" => "elsewhere", "resource_type" => "user", "resource_id" => "9",
                       "occurred_at" => "2025-01-02T03:04:05Z", "trace_id" => "t-1", "payload" => { "id" => 9 } }
          expect(JetstreamBridge.publish(original)).to be(true)
          _, envelope, headers = only_message
          expect(envelope).to eq(original)
          expect(headers["Nats-Msg-Id"]).to eq("re-1")
        end

        it "does not silently drop a schema_version it cannot write" do
          outcome = begin
            JetstreamBridge.publish(event_type: "created", resource_type: "user", payload: {}, schema_version: 2)
          rescue ArgumentError => e
            e
          end
          if outcome.is_a?(ArgumentError)
            expect(outcome.message).to include("schema_version")
            expect(message_count).to eq(0)
          else
            _, envelope, = only_message
            expect(envelope["schema_version"]).to eq(2)
          end
        end
      end

      describe "the positional Hash form" do
        it "accepts symbol keys" do
          expect(JetstreamBridge.publish({ event_type: "user.created", payload: { id: 1 } })).to be(true)
          _, envelope, = only_message
          expect(envelope).to include("event_type" => "user.created", "resource_type" => "user", "resource_id" => "1")
        end

        it "accepts string keys" do
          expect(JetstreamBridge.publish({ "event_type" => "order.paid", "payload" => { "id" => 5 },
                                           "trace_id" => "tr" })).to be(true)
          _, envelope, = only_message
          expect(envelope).to include("event_type" => "order.paid", "resource_type" => "order",
                                      "resource_id" => "5", "trace_id" => "tr")
        end
      end

      describe "JetstreamBridge::Publisher.new.publish" do
        it "publishes the same envelope as the convenience method" do
          publisher = JetstreamBridge::Publisher.new
          expect(publisher.publish(resource_type: "user", event_type: "created", payload: { id: 1 },
                                   event_id: "p-1", occurred_at: "2025-08-13T21:00:00Z")).to be(true)
          expect(publisher.publish(resource_type: "user", event_type: "updated", payload: { id: 1, email: "x@y.z" })).to be(true)
          messages = stream_messages
          expect(messages.size).to eq(2)
          first = JSON.parse(messages[0][1])
          expect(first.delete("trace_id")).to match(/\A\h{16}\z/)
          expect(first).to eq("event_id" => "p-1", "schema_version" => 1, "event_type" => "created",
                              "producer" => "app", "resource_type" => "user", "resource_id" => "1",
                              "occurred_at" => "2025-08-13T21:00:00Z", "payload" => { "id" => 1 })
          expect(messages[0][2]["Nats-Msg-Id"]).to eq("p-1")
          expect(JSON.parse(messages[1][1])["event_type"]).to eq("updated")
        end
      end

      describe "subject override" do
        it "publishes to the given subject, captured by another stream" do
          other_stream = "#{bridge_env}-override"
          custom = "#{bridge_env}.custom.subject.override"
          native_client.ensure_stream(stream_spec_of(other_stream, [custom]), :keep)

          expect(JetstreamBridge.publish(resource_type: "user", event_type: "created", payload: { id: 3 },
                                         event_id: "ovr-1", subject: custom)).to be(true)
          subject, envelope, headers = only_message(other_stream)
          expect(subject).to eq(custom)
          expect(envelope).to include("event_id" => "ovr-1", "event_type" => "created", "resource_id" => "3")
          expect(envelope.keys).to eq(envelope_keys)
          expect(headers["Nats-Msg-Id"]).to eq("ovr-1")
          expect(message_count).to eq(0) # nothing went to the bridge's own subject
        end

        it "rejects a wildcard or malformed subject before sending" do
          ["#{bridge_env}.*", "#{bridge_env}.>", "a..b", "has space"].each do |bad|
            expect { JetstreamBridge.publish(event_type: "x.y", payload: {}, subject: bad) }
              .to raise_error(ArgumentError, /subject/)
          end
        end
      end

      describe "deduplication" do
        it "stores one message when the same event_id is published twice" do
          2.times do
            expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "dup-1")).to be(true)
          end
          expect(stream_messages.size).to eq(1)
          expect(stream_messages.first[2]["Nats-Msg-Id"]).to eq("dup-1")
        end

        it "stores both when event_ids differ" do
          JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "a-1")
          JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "a-2")
          expect(message_count).to eq(2)
        end
      end
    end
  end

  describe "errors" do
    it "raises StreamNotFoundError for a subject no stream captures" do
      configure_bridge(publish_attempts: 1)
      expect { JetstreamBridge.publish(event_type: "x.y", payload: {}, subject: "#{bridge_env}.nowhere.at.all") }
        .to raise_error(JetstreamBridge::StreamNotFoundError, /nowhere\.at\.all/)
    end

    it "raises StreamNotFoundError after retries too (publish never returns false)" do
      expect { JetstreamBridge.publish(event_type: "x.y", payload: {}, subject: "#{bridge_env}.nowhere") }
        .to raise_error(JetstreamBridge::StreamNotFoundError)
    end

    [nil, "", "   "].each do |blank|
      it "raises ArgumentError for event_type #{blank.inspect}, before connecting" do
        expect { JetstreamBridge.publish(event_type: blank, payload: {}) }.to raise_error(ArgumentError, /event_type/)
        expect(JetstreamBridge.connected?).to be(false)
      end
    end

    it "raises ArgumentError without event_type" do
      expect { JetstreamBridge.publish(resource_type: "user", payload: {}) }.to raise_error(ArgumentError, /event_type/)
    end

    it "raises ArgumentError naming an unknown argument" do
      expect { JetstreamBridge.publish(event_type: "user.created", payloads: {}) }
        .to raise_error(ArgumentError, /payloads/)
    end

    it "raises ArgumentError for a positional argument that is not a Hash" do
      expect { JetstreamBridge.publish("user.created") }.to raise_error(ArgumentError)
    end

    {
      "an invalid UTF-8 string" => { name: (+"\xff\xfe").force_encoding("UTF-8") },
      "a binary string that is not UTF-8" => { blob: "\xC3\x28".b },
      "NaN" => { value: Float::NAN },
      "10,000 levels of nesting" => (1..10_000).reduce({}) { |inner, _| { a: inner } }
    }.each do |what, payload|
      it "raises ArgumentError for a payload with #{what}, before anything is sent" do
        expect { JetstreamBridge.publish(event_type: "user.created", payload: payload) }
          .to raise_error(ArgumentError, /payload/)
        expect(JetstreamBridge.connected?).to be(false)
        JetstreamBridge.ensure_topology!
        expect(message_count).to eq(0)
      end

      it "raises ArgumentError for a payload with #{what} once connected too, sending nothing" do
        JetstreamBridge.ensure_topology!
        expect { JetstreamBridge.publish(event_type: "user.created", payload: payload) }
          .to raise_error(ArgumentError, /payload/)
        expect { JetstreamBridge.publish_batch([{ event_type: "user.created", payload: {} }, { event_type: "user.created", payload: payload }]) }
          .to raise_error(ArgumentError, /payload/)
        expect(message_count).to eq(0)
      end
    end

    it "raises ArgumentError for an occurred_at that is not ISO-8601" do
      expect { JetstreamBridge.publish(event_type: "user.created", payload: {}, occurred_at: "yesterday") }
        .to raise_error(ArgumentError, /occurred_at/)
      expect { JetstreamBridge.publish(event_type: "user.created", payload: {}, occurred_at: 12) }
        .to raise_error(ArgumentError, /occurred_at/)
      expect(JetstreamBridge.connected?).to be(false)
    end

    context "with a server whose max_payload is 4096" do
      around do |example|
        NatsServer.with_server(config: "max_payload: 4096") do |server|
          @small = server
          example.run
        end
      end

      it "raises PayloadTooLargeError for a larger event and stores nothing" do
        configure_bridge(server: @small)
        expect { JetstreamBridge.publish(event_type: "doc.saved", payload: { id: 1, body: "x" * 5_000 }) }
          .to raise_error(JetstreamBridge::PayloadTooLargeError)
        expect(JetstreamBridge.publish(event_type: "doc.saved", payload: { id: 2, body: "x" * 3_000 })).to be(true)
        expect(stream_messages.map { |_, body, _| JSON.parse(body)["resource_id"] }).to eq(["2"])
      end

      it "refuses a batch holding an oversized event before sending any of it, naming its index" do
        configure_bridge(server: @small)
        JetstreamBridge.ensure_topology! # connected: both build routes (core and Ruby) check
        events = [{ event_type: "doc.saved", payload: { id: 1 }, event_id: "ok-1" },
                  { event_type: "doc.saved", payload: { id: 2, body: "x" * 5_000 }, event_id: "big-2" },
                  { event_type: "doc.saved", payload: { id: 3 }, event_id: "ok-3" }]
        expect { JetstreamBridge.publish_batch(events) }
          .to raise_error(JetstreamBridge::PayloadTooLargeError, /\Apublish_batch events\[1\]: event big-2 is \d+ bytes .*max_payload \(4096 bytes\)/)
        with_headers = events.map { |e| e.merge(headers: { "X-Tenant" => "acme" }) }
        expect { JetstreamBridge.publish_batch(with_headers) }.to raise_error(JetstreamBridge::PayloadTooLargeError, /events\[1\]: event big-2/)
        expect(stream_messages).to be_empty
      end

      # Before, headers were not counted until the server refused the message.
      it "counts headers against max_payload, naming the largest header, in publish, publish_batch and the outbox" do
        configure_bridge(server: @small)
        JetstreamBridge.ensure_topology!
        big = { "X-Trace" => "t", "X-Context" => "c" * 3_000 }
        event = { event_type: "doc.saved", payload: { id: 1, body: "x" * 1_500 }, headers: big }
        expect { JetstreamBridge.publish(**event) }
          .to raise_error(JetstreamBridge::PayloadTooLargeError, /headers; the largest: X-Context, 3000 bytes\), over the server's max_payload \(4096 bytes\)/)
        expect { JetstreamBridge.publish_batch([event]) }.to raise_error(JetstreamBridge::PayloadTooLargeError, /events\[0\].*X-Context/)
        expect(JetstreamBridge.publish(**event, headers: { "X-Trace" => "t" })).to be(true)
        expect(stream_messages.size).to eq(1)
      end
    end
  end

  describe "retry strategy" do
    let(:recorder) do
      Class.new do
        attr_reader :calls

        def initialize(answer) = (@answer = answer; @calls = [])

        def delay_for(attempt, error)
          @calls << [attempt, error.class]
          @answer
        end
      end
    end

    it "asks a custom strategy for the delay before each retry, then raises" do
      strategy = recorder.new(0)
      configure_bridge(retry_strategy: strategy, publish_attempts: 3)
      expect { JetstreamBridge.publish(event_type: "x.y", payload: {}, subject: "#{bridge_env}.nowhere") }
        .to raise_error(JetstreamBridge::StreamNotFoundError)
      expect(strategy.calls).to eq([[1, JetstreamBridge::StreamNotFoundError], [2, JetstreamBridge::StreamNotFoundError]])
    end

    it "gives up when the strategy answers nil" do
      strategy = recorder.new(nil)
      configure_bridge(retry_strategy: strategy, publish_attempts: 5)
      expect { JetstreamBridge.publish(event_type: "x.y", payload: {}, subject: "#{bridge_env}.nowhere") }
        .to raise_error(JetstreamBridge::StreamNotFoundError)
      expect(strategy.calls.size).to eq(1)
    end

    it "is not consulted for errors a retry cannot fix" do
      strategy = recorder.new(0)
      configure_bridge(retry_strategy: strategy)
      expect { JetstreamBridge.publish(event_type: nil, payload: {}) }.to raise_error(ArgumentError)
      expect(strategy.calls).to eq([])
    end

    it "can be given to a Publisher instance" do
      strategy = recorder.new(0)
      publisher = JetstreamBridge::Publisher.new(retry_strategy: strategy, attempts: 2)
      expect { publisher.publish(event_type: "x.y", payload: {}, subject: "#{bridge_env}.nowhere") }
        .to raise_error(JetstreamBridge::StreamNotFoundError)
      expect(strategy.calls.map(&:first)).to eq([1])
    end

    it "publishes with :linear and :exponential" do
      %i[linear exponential].each do |name|
        configure_bridge(retry_strategy: name)
        expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: name.to_s })).to be(true)
        expect(message_count).to eq(1)
      end
    end

    it "has growing, capped delays" do
      exp = JetstreamBridge::RetryStrategy::Exponential.new(base: 0.1, max_delay: 0.5)
      expect((1..5).map { |a| exp.delay_for(a, nil) }).to eq([0.1, 0.2, 0.4, 0.5, 0.5])
      lin = JetstreamBridge::RetryStrategy::Linear.new(step: 0.2, max_delay: 0.5)
      expect((1..4).map { |a| lin.delay_for(a, nil).round(3) }).to eq([0.2, 0.4, 0.5, 0.5])
    end
  end

  describe "connection" do
    it "does not connect before the first publish, and is connected after" do
      expect(JetstreamBridge.connected?).to be(false)
      JetstreamBridge.publish(event_type: "user.created", payload: {})
      expect(JetstreamBridge.connected?).to be(true)
      JetstreamBridge.reset!
      expect(JetstreamBridge.connected?).to be(false)
    end

    it "connects, publishes and instruments from a signal handler (trap context, where a Mutex may not be taken)" do
      require "active_support" # as in a Rails app (7.2's notifications need it loaded first)
      require "active_support/notifications"
      expect(JetstreamBridge.connected?).to be(false)
      # New subscriptions: neither notifier has looked the event name up yet (a lookup that
      # takes a Mutex).
      seen = []
      hook = JetstreamBridge.instrumenter.subscribe("publish.jetstream_bridge") { |_, payload| seen << [:hook, payload[:event_id]] }
      rails = ActiveSupport::Notifications.subscribe("publish.jetstream_bridge") { |*, payload| seen << [:rails, payload[:event_id]] }
      outcome = in_signal_handler { JetstreamBridge.publish(event_type: "shutdown.notice", payload: {}, event_id: "from-trap") }
      expect(outcome).to be(true)
      expect(stream_messages.map { |_, _, headers| headers["Nats-Msg-Id"] }).to eq(["from-trap"])
      expect(seen).to contain_exactly([:hook, "from-trap"], [:rails, "from-trap"])
    ensure
      JetstreamBridge.instrumenter.unsubscribe(hook) if hook
      ActiveSupport::Notifications.unsubscribe(rails) if rails
    end

    it "logs what a signal handler's publish does (the stream provisioned again), though Logger cannot write in a trap" do
      JetstreamBridge.publish(event_type: "user.created", payload: {})
      stream = JetstreamBridge.config.stream_name
      expect(RawJetStream.request(shared_server.url, "STREAM.DELETE.#{stream}")["success"]).to be(true)
      @log_io.truncate(0)
      outcome = nil
      stderr = capturing_stderr do
        outcome = in_signal_handler { JetstreamBridge.publish(event_type: "shutdown.notice", payload: {}, event_id: "trap-provisions") }
      end
      expect(outcome).to be(true)
      expect(@log_io.string).to include("stream #{stream} created")
      expect(stderr).not_to include("log writing failed")
      expect(stream_messages.map { |_, _, headers| headers["Nats-Msg-Id"] }).to eq(["trap-provisions"])
    end

    context "with connection events waiting to be logged" do
      include_context "with its own nats-server"

      # As in a Rails app: the events also go to ActiveSupport::Notifications (whose
      # subscriber lookup takes a Mutex).
      before { require "active_support/notifications" }

      # Holds the event watcher thread inside its first log line until the gate opens, so
      # the events of a reconnect stay queued for whoever drains next.
      let(:gate) { Queue.new }
      let(:log) { StringIO.new }
      let(:gated_logger) do
        gate = self.gate
        Class.new(Logger) do
          define_method(:add) do |*args, &block|
            gate.pop.then { |open| gate << open } if Thread.current.name == "jetstream_bridge-events"
            super(*args, &block)
          end
        end.new(log)
      end

      it "publishes from a signal handler and leaves the events to be logged after it (a trap may not log)" do
        configure_bridge(server: @server, logger: gated_logger)
        JetstreamBridge.publish(event_type: "user.created", payload: {})
        @server.restart
        eventually { JetstreamBridge.connected? && native_client.events_pending? }

        outcome = in_signal_handler { JetstreamBridge.publish(event_type: "shutdown.notice", payload: {}, event_id: "trap-with-events") }
        expect(outcome).to be(true)

        gate << :open
        eventually { log.string.include?("disconnected") && !native_client.events_pending? }
        expect(stream_messages.map { |_, _, headers| headers["Nats-Msg-Id"] }).to include("trap-with-events")
      ensure
        gate << :open
      end
    end

    it "refuses with a clear error, instead of hanging, a signal handler's publish that interrupted the connection being made" do
      script = <<~RUBY
        require "socket"
        require "logger"
        require "jetstream_bridge"
        black_hole = TCPServer.new("127.0.0.1", 0) # accepts and never answers: connecting waits its timeout
        Thread.new { _held = black_hole.accept; Process.kill("USR2", Process.pid); sleep } # holds the socket open
        JetstreamBridge.configure(nats_urls: "nats://127.0.0.1:\#{black_hole.addr[1]}", env: "t", app_name: "app",
                                  destination_app: "other", connect_timeout: "2s", publish_attempts: 1,
                                  logger: Logger.new(IO::NULL))
        from_trap = nil
        trap("USR2") do
          from_trap = begin
            JetstreamBridge.publish(event_type: "a.b", payload: {})
          rescue StandardError => e
            e
          end
        end
        begin
          JetstreamBridge.publish(event_type: "a.b", payload: {})
        rescue JetstreamBridge::ConnectionError
          nil
        end
        puts from_trap.class, from_trap.message
      RUBY
      expect(ruby_child_lines(script))
        .to eq(["JetstreamBridge::ConnectionError",
                "not connected yet: a signal handler interrupted the connection being made and cannot wait for it"])
    end

    it "does not hang a signal handler's first publish when the signal interrupted its thread inside the logger" do
      script = <<~RUBY
        require "logger"
        require "stringio"
        require "jetstream_bridge"
        # A log device whose write is slow once: the main thread holds the logger's lock there.
        slow = Class.new(StringIO) do
          attr_accessor :stall
          def stalled = (@stalled ||= Queue.new)
          def write(*args)
            if stall
              self.stall = false
              stalled << true
              sleep 1 # the app's line holds the logger's lock
            end
            super
          end
        end.new
        #{trap_publisher_lines('trap-in-logger', 'Logger.new(slow)')}
        slow.stalled # made before the thread that waits on it
        Thread.new { slow.stalled.pop; Process.kill("USR2", Process.pid) }
        slow.stall = true
        JetstreamBridge.config.logger.info("a line of the app's")
        sleep 0.1 while from_trap.nil?
        # The handler's lines, written once the app's line let go of the logger (5 s at most).
        lines = -> { slow.string.lines.grep(/connected to|app's/).size }
        50.times { break if lines.call >= 2; sleep 0.1 }
        puts from_trap.inspect, lines.call
      RUBY
      expect(ruby_child_lines(script)).to eq(%w[true 2])
      expect(stream_messages.map { |_, _, headers| headers["Nats-Msg-Id"] }).to eq(["trap-in-logger"])
    end

    it "does not hang a signal handler's publish when the signal interrupted its thread holding ActiveSupport's notifier lock" do
      script = <<~RUBY
        require "logger"
        require "active_support/notifications"
        require "jetstream_bridge"
        #{trap_publisher_lines('trap-in-notifier', 'Logger.new(IO::NULL)')}
        JetstreamBridge.publish(event_type: "user.created", payload: {})
        ActiveSupport::Notifications.subscribe("publish.jetstream_bridge") { nil } # the name is looked up afresh
        # Hold the notifier's lock as a subscribe in progress would (ActiveSupport 6.1's Fanout
        # is a Mutex_m; 7.x keeps a Mutex in @mutex).
        notifier = ActiveSupport::Notifications.notifier
        lock = notifier.respond_to?(:synchronize) ? notifier : notifier.instance_variable_get(:@mutex)
        lock.synchronize do
          Process.kill("USR2", Process.pid)
          sleep 0.1 while from_trap.nil?
        end
        puts from_trap.inspect
      RUBY
      expect(ruby_child_lines(script, timeout: 20)).to eq(%w[true])
      expect(stream_messages.map { |_, _, headers| headers["Nats-Msg-Id"] }).to include("trap-in-notifier")
    end

    it "uses the next URL of a comma-separated list when one server is down" do
      dead = NatsServer.free_ports(1, exclude: [shared_server.port]).first
      configure_bridge(server: "nats://127.0.0.1:#{dead}, #{shared_server.url}")
      expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })).to be(true)
      expect(message_count).to eq(1)
    end
  end

  # Each form twice: as the first call (Ruby builds the event, then connects) and once
  # connected (the core builds and sends it in one call, Client#publish_event/_events).
  { "as the first call" => false, "once connected" => true }.each do |mode, connected|
    context mode do
      before { JetstreamBridge.ensure_topology! if connected }

      describe "publish_batch" do
        it "publishes 1000 events, all stored with distinct ids" do
          events = Array.new(1000) { |i| { event_type: "user.created", payload: { id: i } } }
          result = JetstreamBridge.publish_batch(events)
          expect(result.published).to eq(1000)
          expect(result.failed).to eq([])
          expect(result.duplicates).to eq(0)
          expect(result).to be_success
          expect(result.event_ids.uniq.size).to eq(1000)

          stored = stream_messages
          expect(stored.size).to eq(1000)
          expect(stored.map { |_, _, h| h["Nats-Msg-Id"] }).to match_array(result.event_ids)
          bodies = stored.map { |_, body, _| JSON.parse(body) }
          expect(bodies.map { |b| b["resource_id"] }).to match_array((0...1000).map(&:to_s))
          expect(bodies.map(&:keys).uniq).to eq([envelope_keys])
        end

        it "reports failures per event, with their event ids, and publishes the rest" do
          failing = [3, 250, 999]
          events = Array.new(1000) do |i|
            e = { event_type: "user.created", payload: { id: i }, event_id: "b-#{i}" }
            failing.include?(i) ? e.merge(subject: "#{bridge_env}.nowhere.#{i}") : e
          end
          result = JetstreamBridge.publish_batch(events)
          expect(result.published).to eq(997)
          expect(result).not_to be_success
          expect(result.failed.map { |index, id, _, _| [index, id] }).to eq(failing.map { |i| [i, "b-#{i}"] })
          expect(result.failed.map { |f| f[2] }).to all(eq("StreamNotFoundError"))
          expect(result.failed.map { |f| f[3] }).to all(include("nowhere"))
          expect(message_count).to eq(997)
        end

        # A large batch goes out in parts of 8,192 (its memory freed part by part): indexes,
        # ids and duplicates still refer to the whole batch (built by Ruby as the first call,
        # by the core once connected).
        it "publishes a batch larger than one part, failures and duplicates indexed across parts" do
          failing = [5, 8_191, 8_192, 17_000]
          events = Array.new(20_000) do |i|
            e = { event_type: "user.created", payload: { id: i }, event_id: "p-#{i < 19_990 ? i : 19_989}" }
            failing.include?(i) ? e.merge(subject: "#{bridge_env}.nowhere.#{i}") : e
          end
          result = JetstreamBridge.publish_batch(events)
          expect(result.failed.map { |index, id, _, _| [index, id] }).to eq(failing.map { |i| [i, "p-#{i}"] })
          expect(result.event_ids).to eq(events.map { |e| e[:event_id] })
          expect([result.published, result.duplicates]).to eq([20_000 - failing.size, 10])
          expect(message_count).to eq(19_990 - failing.size)
        end

        it "counts duplicates and stores them once" do
          events = Array.new(10) { |i| { event_type: "user.created", payload: { id: i }, event_id: "d-#{i % 4}" } }
          result = JetstreamBridge.publish_batch(events)
          expect(result.published).to eq(10)
          expect(result.duplicates).to eq(6)
          expect(message_count).to eq(4)
        end

        it "honours the window option and accepts an empty batch" do
          result = JetstreamBridge.publish_batch(Array.new(50) { |i| { event_type: "user.created", payload: { id: i } } }, window: 1)
          expect(result.published).to eq(50)
          expect(message_count).to eq(50)
          empty = JetstreamBridge.publish_batch([])
          expect([empty.published, empty.failed, empty.event_ids]).to eq([0, [], []])
        end

        it "raises ArgumentError naming what was given when it is not an Array of events" do
          expect { JetstreamBridge.publish_batch(nil) }.to raise_error(ArgumentError, /publish_batch expects an Array of events.*got nil/)
          expect { JetstreamBridge.publish_batch({ event_type: "user.created" }) }
            .to raise_error(ArgumentError, /publish_batch expects an Array of events.*got Hash/)
          expect { JetstreamBridge.publish_batch("user.created") }.to raise_error(ArgumentError, /got String/)
          JetstreamBridge.ensure_topology!
          expect(message_count).to eq(0)
        end

        it "raises ArgumentError naming window when it is not a positive Integer" do
          events = [{ event_type: "user.created", payload: {} }]
          [-1, 0, 2.5, "8", nil].each do |window|
            expect { JetstreamBridge.publish_batch(events, window: window) }
              .to raise_error(ArgumentError, /window must be a positive Integer, got #{Regexp.escape(window.inspect)}/)
          end
          JetstreamBridge.ensure_topology!
          expect(message_count).to eq(0)
        end

        it "raises ArgumentError naming the invalid event's index before anything is sent" do
          valid = { event_type: "user.created", payload: {} }
          expect { JetstreamBridge.publish_batch([valid, { event_type: nil, payload: {} }]) }
            .to raise_error(ArgumentError, /\Apublish_batch events\[1\]: event_type is required/)
          expect { JetstreamBridge.publish_batch([valid, valid, 5]) }
            .to raise_error(ArgumentError, /\Apublish_batch events\[2\]: publish expects keyword arguments or a Hash, got Integer/)
          expect { JetstreamBridge.publish_batch([{ event_type: "user.created", payload: { f: Float::NAN } }]) }
            .to raise_error(ArgumentError, /\Apublish_batch events\[0\]: payload cannot be encoded as JSON/)
          JetstreamBridge.ensure_topology!
          expect(message_count).to eq(0)
        end
      end
    end
  end
end
