# frozen_string_literal: true

require "json"
require "securerandom"
require_relative "../support/active_record_db"
require_relative "../support/consumer_helpers"
require_relative "../support/nats_api"

# The idempotent inbox, in-process: a real consumer against the shared nats-server, with
# ActiveRecord on SQLite and on PostgreSQL (the generator's tables plus a `widgets` table
# standing for the handler's own database work).
module InboxSpec
  class Widget < ActiveRecord::Base
    self.table_name = "inbox_spec_widgets"
  end

  RSpec.shared_examples "an idempotent inbox" do |kind|
    include ConsumerHelpers

    let(:db) { ActiveRecordDb.public_send(kind) }
    let(:inbox) { JetstreamBridge::InboxEvent }

    before(:all) do
      ActiveRecordDb.public_send(kind).activate!
      unless ActiveRecord::Base.connection.table_exists?("inbox_spec_widgets")
        ActiveRecordDb.public_send(kind).migrate_code(<<~RUBY)
          create_table :inbox_spec_widgets do |t|
            t.string :event_id
            t.integer :n
          end
          create_table :inbox_spec_minimal do |t|
            t.string :event_id, index: { unique: true }
          end
          create_table :inbox_spec_short_error do |t|
            t.string :event_id, index: { unique: true }
            t.string :subject
            t.string :status
            t.string :last_error, limit: 255
            t.integer :deliveries
            t.timestamps
          end
        RUBY
      end
    end

    before do
      db.activate!
      db.truncate!("jetstream_inbox_events", "jetstream_outbox_events", "inbox_spec_widgets", "inbox_spec_minimal",
                    "inbox_spec_short_error")
      InboxSpec::Widget.reset_column_information
    end

    after { stop_consumers }

    # Publishes a body onto the consumed subject with core NATS (no Nats-Msg-Id header), so
    # the same envelope can be stored twice: the stream's deduplication does not see it.
    def publish_without_msg_id(body, times: 1)
      JetstreamBridge.ensure_topology! # the stream must exist before core NATS publishes reach it
      conn = NatsApi::Conn.new(bridge_url, 5)
      times.times { conn.publish(dest_subject, body) }
      conn.ping
    ensure
      conn&.close
    end

    def envelope(event_id: SecureRandom.uuid, n: 1)
      JetstreamBridge::Event.build(event_type: "widget.created", payload: { id: n, n: n }, event_id: event_id,
                                   subject: dest_subject).json
    end

    def create_widget(call)
      InboxSpec::Widget.create!(event_id: call.event["event_id"], n: call.event["payload"]["n"])
    end

    # Makes the open transaction's commit raise (a transaction record failing before it).
    def fail_commit(error_class, message)
      record = Class.new do
        define_method(:before_committed!) { |*| raise error_class, message }
        def committed!(*, **) = nil
        def rolledback!(*, **) = nil
        def trigger_transactional_callbacks? = true
      end
      ActiveRecord::Base.connection.add_transaction_record(record.new)
    end

    context "with use_inbox" do
      before { configure_bridge(use_inbox: true, backoff: %w[100ms], max_deliver: 5) }

      it "runs the handler once for an event delivered twice" do
        id = SecureRandom.uuid
        publish_without_msg_id(envelope(event_id: id), times: 2)
        _, calls = run_recording_consumer { |call| create_widget(call) }
        wait_all_acked # both copies acked: neither can come again
        expect(calls.size).to eq(1)
        expect(InboxSpec::Widget.where(event_id: id).count).to eq(1)
        row = inbox.where(event_id: id).first
        expect(row.status).to eq("processed")
        expect(row.processed_at).not_to be_nil
        expect(row.subject).to eq(dest_subject)
        expect(row.stream).to eq(stream_name)
        expect(row.stream_seq).to be_a(Integer)
        expect(row.deliveries).to eq(1)
        expect(row.payload).to include("event_id" => id, "event_type" => "widget.created")
        expect(inbox.count).to eq(1)
      end

      it "dedupes by the Nats-Msg-Id header, and acks a processed event without calling the handler" do
        ids = publish_incoming(2)
        inbox.create!(event_id: ids[0], subject: dest_subject, status: "processed", processed_at: Time.now)
        _, calls = run_recording_consumer
        eventually { calls.size == 1 }
        wait_all_acked # both acked: neither can come again
        expect(calls.to_a.map(&:id)).to eq([ids[1]])
        expect(consumer_info["num_redelivered"]).to eq(0)
        expect(inbox.where(event_id: ids).pluck(:status)).to all(eq("processed"))
      end

      it "keys by the envelope's event_id: a replayed dead letter (a Nats-Msg-Id of its own) already processed is not handled again" do
        id = SecureRandom.uuid
        inbox.create!(event_id: id, subject: dest_subject, status: "processed", processed_at: Time.now)
        JetstreamBridge.ensure_topology!
        publish_as_is(dest_subject, envelope(event_id: id), "replay:#{stream_name}:7", headers: { "X-Replayed-From" => "7" })
        later = publish_incoming(1)
        _, calls = run_recording_consumer
        eventually { calls.size == 1 }
        wait_all_acked # both acked: neither can come again
        expect(calls.ids).to eq(later)
        expect(inbox.where(event_id: id).count).to eq(1)
      end

      it "prunes only processed rows older than the cutoff, and refuses a cutoff within the redelivery horizon" do
        old = Time.now - (31 * 86_400)
        %w[processed processed failed].each_with_index do |status, i|
          inbox.create!(event_id: "old-#{i}", subject: dest_subject, status: status, processed_at: (old if status == "processed"),
                        created_at: old, updated_at: old)
        end
        inbox.create!(event_id: "recent", subject: dest_subject, status: "processed", processed_at: Time.now)
        # max_deliver 5 x (ack_wait 30 s + backoff up to 100 ms) = 150.5 s, above duplicate_window (2 min).
        expect(JetstreamBridge::Inbox.redelivery_horizon).to eq(150.5)
        expect { JetstreamBridge::Inbox.prune(older_than: "2m") }.to raise_error(ArgumentError, /151s within which an event can still be delivered again/)
        expect(inbox.count).to eq(4)
        expect(JetstreamBridge::Inbox.prune(older_than: "30d")).to eq(2)
        expect(inbox.order(:event_id).pluck(:event_id)).to eq(%w[old-2 recent])
      end

      it "after two failures and a success: one processed row, the side effect once, the failures recorded" do
        id, = publish_incoming(1)
        states = Queue.new
        _, calls = run_recording_consumer do |call|
          create_widget(call) # rolled back with the failed attempts
          if call.deliveries < 3
            # What the inbox says about the previous attempt, read from another connection.
            states << Thread.new { ActiveRecord::Base.connection_pool.with_connection { inbox.where(event_id: id).pluck(:status, :deliveries, :last_error).first } }.value
            raise IOError, "transient #{call.deliveries}"
          end
        end
        eventually { inbox.where(event_id: id, status: "processed").exists? }
        wait_all_acked # acked once committed: it cannot come again
        expect(calls.size).to eq(3)
        expect(calls.to_a.map(&:deliveries)).to eq([1, 2, 3])
        expect(InboxSpec::Widget.where(event_id: id).count).to eq(1)
        row = inbox.where(event_id: id).first
        expect([row.status, row.deliveries, row.last_error]).to eq(["processed", 3, nil])
        expect(inbox.count).to eq(1)
        seen = Array.new(states.size) { states.pop }
        expect(seen).to eq([nil, ["failed", 1, "IOError: transient 1"]])
      end

      it "leaves a failing event not processed: failed with last_error and deliveries, its database work rolled back" do
        id, = publish_incoming(1)
        _, calls = run_recording_consumer do |call|
          create_widget(call)
          raise IOError, "always"
        end
        eventually { calls.size >= 2 }
        row = inbox.where(event_id: id).first
        expect(row.status).to eq("failed")
        expect(row.last_error).to eq("IOError: always")
        expect(row.deliveries).to be >= 1
        expect(row.processed_at).to be_nil
        expect(InboxSpec::Widget.count).to eq(0)
      end

      it "commits nothing when the consumer dies mid-handler; the redelivery is handled once" do
        id, = publish_incoming(1)
        inside = Queue.new
        consumer, = run_recording_consumer do |call|
          create_widget(call)
          if call.deliveries == 1
            inside << true
            sleep 30 # killed here: after the handler's database work, before the commit
          end
        end
        inside.pop
        _, thread = running_consumers.find { |c, _| c == consumer }
        thread.kill
        join_quietly(thread, 10)
        running_consumers.clear
        expect(InboxSpec::Widget.count).to eq(0)
        expect(inbox.where(event_id: id, status: "processed").count).to eq(0)

        _, calls = run_recording_consumer { |call| create_widget(call) }
        eventually { inbox.where(event_id: id, status: "processed").exists? }
        wait_all_acked # acked once committed: it cannot come again
        expect(calls.size).to eq(1)
        expect(calls.to_a.first.deliveries).to eq(2)
        expect(InboxSpec::Widget.where(event_id: id).count).to eq(1)
      end

      it "commits a handler's outbox events with the inbox row, and publishes them only then" do
        ok, bad = publish_incoming(2)
        JetstreamBridge.config.use_outbox = true
        _, calls = run_recording_consumer do |call|
          JetstreamBridge.publish(event_type: "widget.reacted", payload: { id: 1 }, event_id: "reaction-#{call.id}")
          raise IOError, "rejected" if call.id == bad
        end
        eventually { inbox.where(event_id: ok, status: "processed").exists? && calls.size >= 3 }
        JetstreamBridge::Outbox.flush_marks
        expect(JetstreamBridge::OutboxEvent.pluck(:event_id, :status)).to eq([["reaction-#{ok}", "sent"]])
        reactions = stream_messages.select { |subject, _, _| subject == JetstreamBridge.config.source_subject }
        expect(reactions.map { |_, body, _| JSON.parse(body)["event_id"] }).to eq(["reaction-#{ok}"])
      end

      # On SQLite the inbox transactions of concurrent handler threads waited for each
      # other's write lock holding the GVL: 3 of 40 events in 20 s, BusyException in handlers.
      # (How fast: ../shared/repro r28 and bench/outbox_bench.rb, not a timed test.)
      it "handles every event at concurrency 2, no database error reaching a handler" do
        errors = Queue.new
        JetstreamBridge.configure { |c| c.on_error = ->(e, _ctx) { errors << e } }
        ids = publish_incoming(40)
        consumer, calls = run_recording_consumer(concurrency: 2, batch_size: 20) { sleep 0.02 } # the scenario: handlers overlap
        eventually(timeout: 30) { inbox.where(event_id: ids, status: "processed").count == 40 }
        stop_consumer(consumer, running_consumers.last[1])
        expect(calls.size).to eq(40)
        expect(errors.size).to eq(0), -> { errors.map { |e| "#{e.class}: #{e.message}" }.uniq.inspect }
        expect(inbox.where.not(status: "processed").count).to eq(0)
      end

      # Before, concurrency above 1 silently switched the inbox to one transaction per event.
      [1, 3].each do |concurrency|
        it "handles a batch in one transaction at concurrency #{concurrency}: a failing event rolls back only its own work" do
          ids = publish_incoming(30)
          commits = Queue.new
          hook = ActiveSupport::Notifications.subscribe("sql.active_record") do |*, payload|
            commits << payload[:sql] if payload[:sql].match?(/\Acommit/i)
          end
          failed_once = false
          _, calls = run_recording_consumer(concurrency: concurrency, batch_size: 30) do |call|
            create_widget(call)
            if call.id == ids[2] && !failed_once
              failed_once = true
              raise IOError, "third fails once"
            end
          end
          eventually { inbox.where(status: "processed").count == 30 }
          eventually { consumer_info["num_ack_pending"].zero? }
          expect(calls.size).to eq(31)
          expect(InboxSpec::Widget.group(:event_id).count).to eq(ids.to_h { |id| [id, 1] })
          expect(inbox.where(event_id: ids[2]).pluck(:deliveries)).to eq([2])
          expect(commits.size).to be <= 15, "#{commits.size} commits for 30 events"
        ensure
          ActiveSupport::Notifications.unsubscribe(hook)
        end
      end

      it "gives a batch back for redelivery when its commit fails" do
        ids = publish_incoming(3)
        armed = true
        _, calls = run_recording_consumer do |call|
          create_widget(call)
          if armed # fails the commit of the first batch
            armed = false
            fail_commit(IOError, "commit failed")
          end
        end
        eventually { inbox.where(status: "processed").count == 3 }
        wait_all_acked # all three acked once committed: none can come again
        expect(calls.size).to be > 3
        expect(InboxSpec::Widget.group(:event_id).count).to eq(ids.to_h { |id| [id, 1] })
        expect(log_output).to match(/not committed \(\d+ handled\), given back for redelivery: IOError: commit failed/)
      end

      # Before, the batch went back at once: fetched and failed again thousands of times a
      # second, which used up max_deliver within milliseconds and, without the DLQ, dropped
      # the events of a database that was down for a moment.
      it "gives a failed batch back after the backoff, so a short database outage loses nothing (use_dlq off)" do
        configure_bridge(use_inbox: true, use_dlq: false, backoff: %w[500ms], max_deliver: 3)
        ids = publish_incoming(3)
        outage_ends = nil
        run_recording_consumer do |call|
          outage_ends ||= monotonic + 0.3
          create_widget(call)
          fail_commit(ActiveRecord::ConnectionNotEstablished, "database is down") if monotonic < outage_ends
        end
        eventually { inbox.where(status: "processed").count == 3 }
        expect(InboxSpec::Widget.group(:event_id).count).to eq(ids.to_h { |id| [id, 1] })
        expect(log_output.scan("not committed").size).to be_between(1, 3)
      end

      it "records a failure longer than a custom last_error column, and loses no other event of its batch" do
        model = Class.new(ActiveRecord::Base) { self.table_name = "inbox_spec_short_error" }
        stub_const("InboxSpec::ShortError", model)
        configure_bridge(use_inbox: true, inbox_model: "InboxSpec::ShortError", backoff: %w[100ms], max_deliver: 3)
        ids = publish_incoming(10)
        _, calls = run_recording_consumer do |call|
          create_widget(call)
          if call.id == ids[5] && call.deliveries == 1
            raise IOError, "HTTP 503 from payments: #{'x' * 300}"
          end
        end
        eventually { calls.size >= 11 && consumer_info["num_pending"].zero? && consumer_info["num_ack_pending"].zero? }
        expect(InboxSpec::Widget.group(:event_id).count).to eq(ids.to_h { |id| [id, 1] })
        expect(model.where(event_id: ids).pluck(:status)).to all(eq("processed"))
        expect(log_output).not_to include("could not record the failure")
      end

      # The generated tables use json (byte for byte, NUL allowed); tables made by older
      # versions of the generator use jsonb on PostgreSQL, which refuses U+0000.
      def with_payload_column_type(type)
        return yield unless db.postgres? && type == "jsonb"

        change_payload_type = lambda do |to|
          db.connection.execute("ALTER TABLE jetstream_inbox_events ALTER COLUMN payload DROP DEFAULT, " \
                                "ALTER COLUMN payload TYPE #{to} USING payload::text::#{to}, " \
                                "ALTER COLUMN payload SET DEFAULT '{}'")
          inbox.reset_column_information
          JetstreamBridge::Table.reset!
        end
        change_payload_type.call("jsonb")
        yield
      ensure
        change_payload_type&.call("json")
      end

      %w[json jsonb].each do |type|
        it "handles and records an event whose payload holds a NUL character, with the rest of its batch (#{type} payload column)" do
          with_payload_column_type(type) { handles_a_nul_character(stored_as: db.postgres? && type == "jsonb" ? "pasted\uFFFDtext" : "pasted\u0000text") }
        end
      end

      def handles_a_nul_character(stored_as:)
        configure_bridge(use_inbox: true, use_dlq: true, backoff: %w[100ms], max_deliver: 3)
        events = (1..10).map do |i|
          { event_type: "widget.created", event_id: "nul-#{i}", subject: dest_subject,
            payload: { id: i, n: i, note: i == 6 ? "pasted\u0000text" : "ok" } }
        end
        JetstreamBridge.publish_batch(events)
        ids = events.map { |e| e[:event_id] }
        _, calls = run_recording_consumer { |call| create_widget(call) }
        eventually { calls.size.positive? && consumer_info["num_pending"].zero? && consumer_info["num_ack_pending"].zero? }
        expect(calls.distinct_ids.sort).to eq(ids.sort)
        expect(InboxSpec::Widget.group(:event_id).count).to eq(ids.to_h { |id| [id, 1] })
        expect(dlq_messages).to be_empty
        # jsonb cannot hold U+0000: the inbox's copy has U+FFFD in its place (the handler got the original).
        stored_note = inbox.find_by(event_id: "nul-6").payload["payload"]["note"]
        expect(stored_note).to eq(stored_as)
        expect(calls.for("nul-6").first.event["payload"]["note"]).to eq("pasted\u0000text")
      end

      if kind == :postgres
        it "gives back a batch whose transaction PostgreSQL aborted instead of acking a commit that rolled back" do
          ids = publish_incoming(5)
          armed = true
          # A wrapper swallowing a failed statement outside any savepoint aborts the batch transaction.
          breaker = lambda do |_event, context, &handle|
            if armed && context.event["event_id"] == ids[2]
              armed = false
              ActiveRecord::Base.connection.execute("SELECT 1/0") rescue nil # rubocop:disable Style/RescueModifier
            end
            handle.call
          end
          JetstreamBridge::Handling.add_wrapper(breaker)
          _, calls = run_recording_consumer { |call| create_widget(call) }
          eventually { calls.size >= 5 && consumer_info["num_pending"].zero? && consumer_info["num_ack_pending"].zero? }
          expect(InboxSpec::Widget.group(:event_id).count).to eq(ids.to_h { |id| [id, 1] })
          expect(log_output).to match(/not committed \(\d+ handled\), given back for redelivery: .*aborted/)
        ensure
          JetstreamBridge::Handling.remove_wrapper(breaker)
        end

        it "leaves ActiveRecord's reconnect on: a batch after the consumer's database connection dropped is handled at once" do
          skip "ActiveRecord #{ActiveRecord.version} does not reconnect in a transaction (7.1+ does)" if ActiveRecord.version < Gem::Version.new("7.1")
          first = publish_incoming(1)
          _, calls = run_recording_consumer { |call| create_widget(call) }
          eventually { calls.size == 1 && consumer_info["num_ack_pending"].zero? }
          # Every other backend of this database: the consumer thread's connection among them.
          ActiveRecord::Base.connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity " \
                                                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
          second = publish_incoming(1)
          # Never handled when the inbox had read the connection through Rails 7.1+'s raw_connection,
          # which turns the reconnect off for as long as the consumer thread keeps the connection.
          eventually(timeout: 20) { calls.size >= 2 && consumer_info["num_ack_pending"].zero? }
          expect(calls.to_a.map { |c| [c.id, c.deliveries] }).to eq([[first.first, 1], [second.first, 1]])
        end
      end

      it "keys an event without an event id by (stream, stream_seq)" do
        body = JSON.generate("event_type" => "widget.created", "payload" => { "n" => 7 })
        publish_without_msg_id(body)
        _, calls = run_recording_consumer
        eventually { calls.size == 1 && inbox.count == 1 }
        row = inbox.first
        expect(row.event_id).to be_nil
        expect(row.stream).to eq(stream_name)
        expect(row.stream_seq).to be_positive
        expect(row.status).to eq("processed")
      end

      it "works with a custom inbox_model that has only a unique event_id column (a row means processed)" do
        model = Class.new(ActiveRecord::Base) { self.table_name = "inbox_spec_minimal" }
        stub_const("InboxSpec::Minimal", model)
        configure_bridge(use_inbox: true, inbox_model: "InboxSpec::Minimal", backoff: %w[100ms])
        id = SecureRandom.uuid
        publish_without_msg_id(envelope(event_id: id), times: 2)
        failures = 0
        _, calls = run_recording_consumer do |_call|
          failures += 1
          raise IOError, "once" if failures == 1
        end
        eventually { calls.size == 2 }
        wait_all_acked # both copies acked: neither can come again
        expect(calls.size).to eq(2) # one failure, one success; the second copy skipped
        expect(model.pluck(:event_id)).to eq([id])
        expect(inbox.count).to eq(0)
      end
    end

    context "without use_inbox" do
      before { configure_bridge(use_inbox: false) }

      it "calls the handler for every copy and writes no inbox row" do
        publish_without_msg_id(envelope(event_id: "same"), times: 2)
        _, calls = run_recording_consumer
        eventually { calls.size == 2 }
        expect(inbox.count).to eq(0)
        expect(JetstreamBridge::Handling.wrappers_for(JetstreamBridge.config)).to eq([])
      end
    end
  end

  RSpec.describe "Idempotent inbox (SQLite)" do
    it_behaves_like "an idempotent inbox", :sqlite
  end

  RSpec.describe "Idempotent inbox (PostgreSQL)" do
    it_behaves_like "an idempotent inbox", :postgres
  end

  RSpec.describe JetstreamBridge::Handling do
    it "runs the chain outermost first around the handler; an entry that does not yield skips it" do
      order = []
      outer = ->(_event, ctx, &blk) { order << [:outer, ctx.subject]; blk.call }
      skip_all = ->(_event, _ctx) { order << :skip }
      ctx = JetstreamBridge::MessageContext.new(event: {}, subject: "s", deliveries: 1)
      handler = ->(_e, _s, _d) { order << :handler }
      described_class.call(handler, ctx, [outer])
      described_class.call(handler, ctx, [outer, skip_all])
      expect(order).to eq([[:outer, "s"], :handler, [:outer, "s"], :skip])
    end
  end
end
