# frozen_string_literal: true

require_relative "../support/stderr_capture"

require "base64"
require "json"
require "tempfile"
require_relative "../support/child_ruby"
require_relative "../support/consumer_helpers"
require_relative "../support/nats_api"

# Bad input on both sides. Publishing: payloads that cannot be encoded as JSON, deep or
# oversized payloads, text that is not UTF-8, blank event types... each raises a clear
# error before anything is sent (or written to the outbox). Consuming: bodies with invalid
# UTF-8, huge nesting, no headers or the wrong schema go to the DLQ with a reason, and the
# consumer keeps running.
RSpec.describe "Bad input" do
  include ConsumerHelpers

  after { stop_consumers }

  def invalid_utf8(text) = "#{text}\xFF\xFE".dup.force_encoding(Encoding::UTF_8)

  def deep(levels) = levels.times.reduce(1) { |inner, _| [inner] }

  include StderrCapture

  # Publishes a good event with each case's fields merged in; each must raise its ArgumentError.
  def expect_each_case_to_raise(cases)
    cases.each do |label, (fields, message)|
      expect { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, **fields) }
        .to raise_error(ArgumentError, message), label
    end
  end

  def stored_count
    info = native_client.stream_info(JetstreamBridge.config.stream_name)
    info ? JSON.parse(info).dig("state", "messages") : 0
  end

  # Bad publish arguments and the error each must raise.
  circular = [].tap { |a| a << a }
  cases = {
    "a circular payload" => [{ payload: { x: circular } }, /payload cannot be encoded as JSON.*nesting/i],
    "a payload nested 1,000 deep" => [{ payload: { x: 1000.times.reduce(1) { |inner, _| [inner] } } }, /nesting of 100 is too deep/],
    "a payload nested 101 deep" => [{ payload: 101.times.reduce(1) { |inner, _| [inner] } }, /nesting of 100 is too deep/],
    "an invalid UTF-8 string in the payload" => [{ payload: { name: "ab\xFFcd".dup.force_encoding("UTF-8") } }, /payload .*not valid UTF-8/],
    "an invalid UTF-8 key in the payload" => [{ payload: { "k\xFF".dup.force_encoding("UTF-8") => 1 } }, /payload .*not valid UTF-8/],
    "binary bytes in the payload" => [{ payload: { blob: "\xFF\x00\xFE".b } }, /payload .*not valid UTF-8/],
    "a nil event_type" => [{ event_type: nil }, /event_type is required/],
    "an empty event_type" => [{ event_type: "" }, /event_type is required/],
    "a blank event_type" => [{ event_type: " \t " }, /event_type is required/],
    "an invalid UTF-8 event_type" => [{ event_type: "user.\xFF".dup.force_encoding("UTF-8") }, /event_type is not valid UTF-8/],
    "a binary event_type" => [{ event_type: "user.\xFF".b }, /event_type is not valid UTF-8/],
    "an invalid UTF-8 resource_type" => [{ resource_type: "us\xFFer".dup.force_encoding("UTF-8") }, /resource_type is not valid UTF-8/],
    "an invalid UTF-8 trace_id" => [{ trace_id: "t\xFF".dup.force_encoding("UTF-8") }, /trace_id is not valid UTF-8/],
    "an invalid UTF-8 producer" => [{ producer: "p\xFF".dup.force_encoding("UTF-8") }, /producer is not valid UTF-8/],
    "an invalid UTF-8 payload id" => [{ payload: { id: "i\xFF".dup.force_encoding("UTF-8") } }, /resource_id is not valid UTF-8/],
    "an invalid UTF-8 subject" => [{ subject: "x.\xFF".dup.force_encoding("UTF-8") }, /subject is not valid UTF-8/],
    "an event_id with CR/LF (header injection)" => [{ event_id: "id\r\nX-Evil: 1" }, /event_id must not contain control characters/],
    "an event_id of 100 KB" => [{ event_id: "x" * 100_000 }, /event_id is 100000 bytes; at most 1024/],
    "an invalid UTF-8 event_id" => [{ event_id: "e\xFF".dup.force_encoding("UTF-8") }, /event_id is not valid UTF-8/],
    # The server trims Nats-Msg-Id: " order-42" would be dropped as a duplicate of "order-42".
    "an event_id with a leading space" => [{ event_id: " order-42" }, /event_id must not start or end with whitespace/],
    "an event_id with a trailing space" => [{ event_id: "order-42 " }, /event_id must not start or end with whitespace/],
    "an event_id with a trailing no-break space" => [{ event_id: "order-42\u00A0" }, /event_id must not start or end with whitespace/],
    "an event_type given as a Hash" => [{ event_type: { a: 1 } }, /event_type must be a String, Symbol or Integer, got Hash/],
    "a trace_id given as a Hash" => [{ trace_id: { a: 1 } }, /trace_id must be a String, Symbol or Integer, got Hash/],
    "a resource_id given as an Array" => [{ resource_id: [1] }, /resource_id must be a String, Symbol or Integer, got Array/],
    "a payload id that is a Hash" => [{ payload: { id: { a: 1 } } }, /resource_id must be a String, Symbol or Integer, got Hash/],
    "an occurred_at with a trailing newline" => [{ occurred_at: "2025-08-13T21:00:00Z\n" }, /occurred_at must be an ISO-8601 time/],
    "a subject with a space" => [{ subject: "a b" }, /subject "a b" is not a valid subject/],
    "a wildcard subject" => [{ subject: "a.>" }, /not a valid subject/],
    "a JetStream API subject" => [{ subject: "$JS.API.STREAM.PURGE.x" }, /NATS system subject/],
    "a system account subject" => [{ subject: "$SYS.REQ.SERVER.PING" }, /NATS system subject/],
    "a reply inbox subject" => [{ subject: "_INBOX.abc.def" }, /NATS system subject/],
    "an occurred_at that is no time" => [{ occurred_at: "yesterday" }, /occurred_at must be an ISO-8601 time/],
    "an unsupported schema_version" => [{ schema_version: 2 }, /schema_version 2 is not supported/],
    "an unknown argument" => [{ colour: "red" }, /unknown publish argument: :colour/],
    # NATS trims header values in transit: they would arrive changed.
    "a header value with spaces around it" => [{ headers: { "X-Pad" => "  padded  " } }, /header X-Pad must not start or end with whitespace/],
    "a header value with a leading tab" => [{ headers: { "X-Tab" => "\tx" } }, /header X-Tab must not start or end with whitespace/],
    "a header value with a leading no-break space" => [{ headers: { "X-Nbsp" => "\u00a0lead" } }, /header X-Nbsp must not start/],
    "a header value with a trailing ideographic space" => [{ headers: { "X-Ideo" => "trail\u3000" } }, /header X-Ideo must not start/],
    # JetStream refuses a header block over 64 KB (and the outbox row could only die).
    "headers over 64 KB" => [{ headers: { "X-Small" => "s", "X-Blob" => "a" * 70_000 } },
                             /headers take \d+ bytes, over the 65535 a NATS JetStream message can carry; the largest: X-Blob, 70000 bytes/]
  }

  describe "publishing" do
    it "raises a clear ArgumentError for each bad event before connecting or sending anything, without native noise" do
      configure_bridge
      base = { event_type: "user.created", payload: { id: 1 } }
      outcomes = nil
      stderr = capturing_stderr do
        outcomes = cases.to_h do |label, (fields, message)|
          error = begin
            JetstreamBridge.publish(**base, **fields)
            nil
          rescue StandardError => e
            e
          end
          [label, [error, message]]
        end
      end
      outcomes.each do |label, (error, message)|
        expect(error).to be_a(ArgumentError), "#{label}: expected ArgumentError, got #{error.inspect}"
        expect(error.message).to match(message), "#{label}: #{error.message.inspect} does not match #{message.inspect}"
      end
      expect(JetstreamBridge.connected?).to be(false) # nothing was even connected, let alone sent
      expect(stderr).not_to match(/panicked|backtrace/)
    end

    it "raises for NaN and Infinity (also where ActiveSupport, which would write null, encodes)" do
      configure_bridge
      [Float::NAN, -Float::INFINITY].each do |number|
        expect { JetstreamBridge.publish(event_type: "user.created", payload: { x: [1, { y: number }] }) }
          .to raise_error(ArgumentError, /payload cannot be encoded as JSON.*(NaN|Infinity)/)
      end
    end

    it "raises the same errors for deep, circular, NaN and non-UTF-8 payloads when ActiveSupport encodes (a Rails app)" do
      script = <<~'RUBY'
        require "active_support"
        require "active_support/json"
        require "jetstream_bridge"
        require "json"
        JetstreamBridge.configure(nats_urls: "nats://127.0.0.1:1", env: "x", app_name: "a", destination_app: "b")
        circular = [].tap { |a| a << a }
        payloads = { "deep" => 1000.times.reduce(1) { |i, _| [i] }, "deep101" => 101.times.reduce(1) { |i, _| [i] },
                     "nan" => { x: [Float::NAN] }, "infinity" => { x: { y: Float::INFINITY } },
                     "circular" => { x: circular }, "invalid" => { x: "a\xFF".dup.force_encoding("UTF-8") },
                     "deep100" => 100.times.reduce(1) { |i, _| [i] } }
        results = payloads.to_h do |name, payload|
          JetstreamBridge::Event.build({ event_type: "user.created", payload: payload })
          [name, "ok"]
        rescue StandardError, SystemStackError => e
          [name, "#{e.class}: #{e.message}"]
        end
        puts JSON.generate(results)
      RUBY
      out, status = ChildRuby.capture("-e", script)
      expect(status.exitstatus).to eq(0), out
      results = JSON.parse(out.lines.last)
      expect(results["deep"]).to match(/\AArgumentError: .*nesting of 100 is too deep/)
      expect(results["deep101"]).to match(/\AArgumentError: .*nesting of 100 is too deep/)
      expect(results["circular"]).to match(/\AArgumentError: .*(nesting|circular|stack level)/)
      expect(results["invalid"]).to match(/\AArgumentError: .*not valid UTF-8/)
      expect(results["deep100"]).to eq("ok")
      expect(results["nan"]).to match(/\AArgumentError: .*NaN is not allowed/)
      expect(results["infinity"]).to match(/\AArgumentError: .*Infinity is not allowed/)
    end

    it "raises the same errors once connected (the core builds events then), sending nothing" do
      configure_bridge
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 0 })
      expect_each_case_to_raise(cases)
      expect(stored_count).to eq(1)
    end

    it "raises ArgumentError for a payload whose own to_json writes invalid JSON (no ActiveSupport)" do
      script = <<~'RUBY'
        require "jetstream_bridge"
        class Money; def to_json(*) = "12.50 EUR"; end
        JetstreamBridge.configure(nats_urls: "nats://127.0.0.1:1", env: "x", app_name: "a", destination_app: "b")
        begin
          JetstreamBridge::Event.build({ event_type: "order.paid", payload: { id: 1, total: Money.new } })
          puts "built"
        rescue ArgumentError => e
          puts "ArgumentError: #{e.message}"
        end
        puts JetstreamBridge::Event.build({ event_type: "n.big", payload: { n: 10**400, at: Time.at(0).utc } }).json[/"n":\d{5}/]
      RUBY
      out, status = ChildRuby.capture("-e", script)
      expect(status.exitstatus).to eq(0), out
      expect(out.lines.first).to match(/\AArgumentError: payload cannot be encoded as JSON: its to_json wrote invalid JSON.*12\.50 EUR/)
      expect(out.lines.last.strip).to eq('"n":10000') # a number of any size is valid JSON
    end

    { "as the first call" => false, "once connected" => true }.each do |mode, connected|
      it "stores exactly what it was given #{mode}: no key invented by a default proc, Symbols whole, \".created\" an event" do
        configure_bridge
        JetstreamBridge.ensure_topology! if connected
        groups = Hash.new { |h, k| h[k] = [] }
        groups["admins"] << "ada"
        counts = Hash.new(0)
        counts["clicks"] += 3
        JetstreamBridge.publish(event_type: "team.updated", payload: groups, event_id: "groups")
        JetstreamBridge.publish(event_type: "stats.updated", payload: counts, event_id: "counts")
        JetstreamBridge.publish(event_type: "x.y", payload: { :"a\0b" => :"x\0y" }, event_id: "nul")
        JetstreamBridge.publish(event_type: ".created", payload: {}, event_id: "dot")

        expect(groups).to eq("admins" => ["ada"]) # the caller's Hash is unchanged
        bodies = stream_messages.to_h { |_, body, headers| [headers["Nats-Msg-Id"], body] }
        expect(JSON.parse(bodies["groups"])).to include("resource_id" => nil, "payload" => { "admins" => ["ada"] })
        expect(JSON.parse(bodies["counts"])).to include("resource_id" => nil, "payload" => { "clicks" => 3 })
        expect(bodies["nul"]).to include(%("payload":#{JSON.generate({ :"a\0b" => :"x\0y" })}))
        expect(JSON.parse(bodies["nul"])["payload"]).to eq("a\u0000b" => "x\u0000y")
        expect(JSON.parse(bodies["dot"])).to include("resource_type" => "event", "event_type" => ".created")
      end
    end

    it "raises for a bad event of a batch before sending any of it" do
      configure_bridge
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 0 })
      cases.each do |label, (fields, message)|
        events = [{ event_type: "user.created", payload: { id: 1 } }, { event_type: "user.created", payload: { id: 2 }, **fields }]
        expect { JetstreamBridge.publish_batch(events) }.to raise_error(ArgumentError, message), label
      end
      expect(stored_count).to eq(1)
    end

    it "refuses an oversized payload with PayloadTooLargeError and stores nothing" do
      configure_bridge
      expect { JetstreamBridge.publish(event_type: "doc.saved", payload: { body: "x" * 2_000_000 }) }
        .to raise_error(JetstreamBridge::PayloadTooLargeError, /is \d+ bytes \(2000\d+ of body, \d+ of headers\), over the server's max_payload/)
      expect(stored_count).to eq(0)
      expect(JetstreamBridge.publish(event_type: "doc.saved", payload: { body: "x" * 900_000 })).to be(true)
      expect(stored_count).to eq(1)
    end

    it "accepts a payload nested 100 deep and text in other encodings (converted to UTF-8)" do
      configure_bridge
      expect(JetstreamBridge.publish(event_type: "user.created", payload: deep(100), event_id: "deep")).to be(true)
      latin1 = "caf\xE9".dup.force_encoding("ISO-8859-1")
      expect(JetstreamBridge.publish(event_type: "user.#{latin1}", payload: { name: latin1 }, event_id: "latin1")).to be(true)
      bodies = stream_messages.to_h { |_, body, headers| [headers["Nats-Msg-Id"], JSON.parse(body, max_nesting: false)] }
      expect(bodies["latin1"]).to include("event_type" => "user.café", "payload" => { "name" => "café" })
      expect(bodies["deep"]["payload"].flatten).to eq([1])
    end
  end

  describe "publishing with the outbox (SQLite)" do
    before do
      require_relative "../support/active_record_db"
      @db = ActiveRecordDb.sqlite
      @db.activate!
      @db.truncate!
      configure_bridge(use_outbox: true)
    end

    def outbox_rows = @db.connection.select_value("SELECT COUNT(*) FROM jetstream_outbox_events").to_i

    it "writes no outbox row for a bad event" do
      expect_each_case_to_raise(cases)
      expect(outbox_rows).to eq(0)
    end

    it "refuses an event larger than the server's max_payload before writing it to the outbox" do
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 0 }) # connected: max_payload is known
      expect(outbox_rows).to eq(1)
      expect { JetstreamBridge.publish(event_type: "doc.saved", payload: { body: "x" * 2_000_000 }) }
        .to raise_error(JetstreamBridge::PayloadTooLargeError)
      expect(outbox_rows).to eq(1)
    end
  end

  describe "consuming" do
    def envelope(**fields)
      JSON.generate({ event_id: "e-#{SecureRandom.hex(4)}", schema_version: 1, event_type: "user.created",
                      producer: "other", resource_type: "user", payload: { id: 1 } }.merge(fields))
    end

    # A message published by a plain client with no headers at all.
    def publish_without_headers(body)
      NatsApi.with_conn(bridge_url, 5) do |conn|
        conn.publish(dest_subject, body)
        conn.ping
      end
    end

    # A message whose header block is given raw (bytes a plain client can send).
    def publish_with_raw_headers(header_block, body)
      NatsApi.with_conn(bridge_url, 5) do |conn|
        conn.write("HPUB #{dest_subject} #{header_block.bytesize} #{header_block.bytesize + body.bytesize}\r\n".b +
                   header_block.b + body.b + "\r\n".b)
        conn.ping
      end
    end

    def dlq_by_original_id
      dlq_messages.to_h { |_, body, headers| [headers["X-Original-Msg-Id"], [body, headers]] }
    end

    before { configure_bridge(use_dlq: true, max_deliver: 3, backoff: %w[100ms], ack_wait: "3s") }

    it "dead-letters malformed messages with a reason and keeps consuming" do
      bodies = {
        "invalid-utf8-in-json" => envelope(event_type: "user.created").sub("user.created", "user.\xFF\xFE".b).b,
        "binary-garbage" => "\xFF\xFE\x00\x01garbage".b,
        "nested-200" => envelope.sub('{"id":1}', "#{'[' * 200}#{']' * 200}"),
        "nested-100k" => "#{'[' * 100_000}#{']' * 100_000}",
        "event-type-number" => envelope(event_type: 5),
        "no-event-type" => JSON.generate(event_id: "x", payload: {}),
        "no-payload" => JSON.generate(event_id: "x", schema_version: 1, event_type: "user.created"),
        "array" => "[1,2,3]",
        "null" => "null",
        "string" => "\"hello\"",
        "empty" => ""
      }
      reasons = {
        "invalid-utf8-in-json" => /not valid JSON/, "binary-garbage" => /not valid JSON/,
        "nested-200" => /recursion limit/, "nested-100k" => /recursion limit/,
        "event-type-number" => /event_type/, "no-event-type" => /event_type/, "no-payload" => /payload/,
        "array" => /not an event envelope/, "null" => /not an event envelope/, "string" => /not an event envelope/,
        "empty" => /not valid JSON/
      }
      bodies.each { |id, body| publish_raw_body(body, msg_id: "bad-#{id}") }
      publish_without_headers("{not json") # no headers at all, and malformed
      ok_ids = publish_incoming(2)
      publish_without_headers(envelope(event_id: "headerless-ok")) # no headers, but a good envelope
      ok_ids << "headerless-ok"

      _, calls = run_recording_consumer
      eventually(timeout: 20) { (ok_ids - calls.ids).empty? && dlq_messages.size == bodies.size + 1 }
      expect(calls.ids).to match_array(ok_ids) # the handler never saw a malformed message
      dlq = dlq_by_original_id
      bodies.each do |id, body|
        stored_body, headers = dlq.fetch("bad-#{id}")
        expect(headers).to include("X-Dead-Letter-Reason" => "malformed", "X-Error-Class" => "JetstreamBridge::MalformedMessageError")
        expect(headers["X-Error-Message"]).to match(reasons.fetch(id)), "#{id}: #{headers['X-Error-Message']}"
        expect(stored_body.b).to eq(body.b), "#{id}: the DLQ copy keeps the original body"
      end
      headerless = dlq.fetch(nil)
      expect(headerless[0]).to eq("{not json")
      expect(headerless[1]).to include("X-Dead-Letter-Reason" => "malformed", "X-Deliveries" => "1")
      expect(headerless[1]["X-Error-Message"]).to match(/not valid JSON/)

      # Still running: a later event is handled.
      later = publish_incoming(1)
      eventually(timeout: 10) { calls.ids.include?(later.first) }
      expect(consumer_errors).to be_empty
      eventually(timeout: 10) { consumer_info["num_ack_pending"].zero? }
    end

    it "handles the deepest payload the publisher accepts (100 levels)" do
      JetstreamBridge.publish(event_type: "user.created", payload: deep(100), event_id: "deepest", subject: dest_subject)
      _, calls = run_recording_consumer
      eventually(timeout: 10) { calls.ids.include?("deepest") }
      expect(calls.to_a.first.event["payload"].flatten).to eq([1])
      expect(dlq_messages).to be_empty
    end

    # An envelope without event_id is still handled: the inbox falls back to the
    # Nats-Msg-Id header, then to (stream, stream_seq).
    it "dead-letters an envelope of an unsupported schema_version" do
      publish_raw_body(envelope(schema_version: 2), msg_id: "bad-schema-2")
      ok = publish_incoming(1)
      _, calls = run_recording_consumer
      eventually(timeout: 10) { calls.ids.include?(ok.first) }
      # Both settled (the bad one dead-lettered): the handler would have had it before.
      eventually(timeout: 10) { dlq_by_original_id.key?("bad-schema-2") && consumer_info.then { |info| info["num_ack_pending"].zero? && info["num_pending"].zero? } }
      expect(calls.ids).to eq(ok)
      expect(dlq_by_original_id.keys).to contain_exactly("bad-schema-2")
    end

    # async-nats drops the whole connection on a header block it cannot parse, so these
    # never reach a handler: the consumer finds them through the stream API after the
    # disconnect, stores a readable copy on the DLQ and deletes the original.
    it "dead-letters messages whose headers the client cannot read, and keeps consuming the others" do
      unreadable = {
        "NATS/1.0\r\nNats-Msg-Id: bad-utf8\r\nX-Note: caf\xE9\r\n\r\n".b => /the header block is not valid UTF-8/,
        "NATS/1.0\r\nNats-Msg-Id: bad-line\r\nno colon on this line\r\n\r\n".b => /the header line "no colon on this line" has no ':'/
      }
      first = publish_incoming(1)
      stored = unreadable.keys.to_h do |block|
        body = envelope
        before = last_seq
        publish_with_raw_headers(block, body)
        # A plain publish gets no ack: the stream may store it just after the PONG.
        [eventually { (seq = last_seq) > before && seq }, [block, body]]
      end
      last = publish_incoming(1)

      _, calls = run_recording_consumer
      # Events cut off with the connection come back after ack_wait (3 s).
      eventually(timeout: 30) { ((first + last) - calls.ids).empty? && stored.keys.none? { |seq| still_stored?(seq) } }
      expect(calls.ids).to match_array(first + last)
      dlq = dlq_messages.to_h { |_, body, headers| [Integer(headers["X-Stream-Seq"]), [body, headers]] }
      expect(dlq.keys).to match_array(stored.keys)
      stored.each do |seq, (block, body)|
        dlq_body, headers = dlq.fetch(seq)
        expect(dlq_body.b).to eq(body.b)
        expect(headers).to include("X-Dead-Letter-Reason" => "malformed", "X-Error-Class" => "JetstreamBridge::MalformedMessageError",
                                   "X-Original-Subject" => dest_subject, "Nats-Msg-Id" => "dlq:#{stream_name}:#{seq}")
        expect(headers["X-Error-Message"]).to match(/headers cannot be read: /).and match(unreadable.fetch(block))
        expect(Base64.strict_decode64(headers["X-Original-Headers-Base64"])).to eq(block)
      end

      later = publish_incoming(1)
      eventually(timeout: 10) { calls.ids.include?(later.first) }
      expect(consumer_errors).to be_empty
      eventually(timeout: 10) { consumer_info["num_ack_pending"].zero? }
    end

    def last_seq = JSON.parse(native_client.stream_info(stream_name)).dig("state", "last_seq")

    # The original is unreadable for the client's message API too, so it is looked up raw.
    def still_stored?(seq)
      reply = NatsApi.request(bridge_url, "$JS.API.STREAM.MSG.GET.#{stream_name}", JSON.generate(seq: seq))
      !reply["message"].nil?
    end
  end
end
