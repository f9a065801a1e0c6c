# frozen_string_literal: true

require "json"
require "tmpdir"
require_relative "../support/active_record_db"
require_relative "../support/forked"
require_relative "../support/child_ruby"

# The transactional outbox and its relay, in-process with ActiveRecord against SQLite and
# PostgreSQL (tables made by the generator's migration templates) and real nats-servers.
module OutboxSpec
  RSpec.shared_examples "a transactional outbox" do |kind|
    let(:db) { ActiveRecordDb.public_send(kind) }
    let(:outbox) { JetstreamBridge::OutboxEvent }

    before do
      db.activate!
      db.truncate!
      JetstreamBridge::Outbox.resume!
    end

    def publish_user(id, **extra)
      JetstreamBridge.publish(event_type: "user.created", payload: { id: id }, **extra)
    end

    # [[event_id, body, headers], ...] of the messages on the publish subject.
    def published
      info = native_client.stream_info(JetstreamBridge.config.stream_name)
      return [] unless info && JSON.parse(info).dig("state", "messages").to_i.positive?

      stream_messages.select { |subject, _, _| subject == JetstreamBridge.config.source_subject }
                     .map { |_, body, headers| [JSON.parse(body)["event_id"], body, headers] }
    end

    def published_ids = published.map(&:first)

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    # Rows published directly are marked sent in the background.
    def settle
      expect(JetstreamBridge::Outbox.flush_marks).to be(true)
    end

    # The one outbox row (fails when there are more or none).
    def only_row
      settle
      rows = outbox.all.to_a
      expect(rows.size).to eq(1), "expected one outbox row, found #{rows.size}"
      rows.first
    end

    context "with NATS up" do
      before { configure_bridge(use_outbox: true) }

      it "publishes after the transaction commits, not before, and marks the row sent" do
        seen_inside = nil
        ActiveRecord::Base.transaction do
          expect(publish_user(1)).to be(true)
          seen_inside = published_ids.size
        end
        row = only_row
        expect(seen_inside).to eq(0)
        expect(published_ids).to eq([row.event_id])
        expect(row.status).to eq("sent")
        expect(row.sent_at).to be_within(60).of(Time.now)
        expect(row.attempts).to eq(1)
        expect(row.last_error).to be_nil
        expect(row.subject).to eq(JetstreamBridge.config.source_subject)
        expect(row.payload).to include("event_id" => row.event_id, "event_type" => "user.created", "payload" => { "id" => 1 })
        expect(row.headers).to eq("Nats-Msg-Id" => row.event_id)
        _, body, headers = published.first
        expect(headers["Nats-Msg-Id"]).to eq(row.event_id)
        expect(JSON.parse(body)).to eq(row.payload)
      end

      it "refuses a publish from a signal handler with an error saying why, and writes nothing" do
        outcome = in_signal_handler { publish_user(1) }
        expect(outcome).to be_a(JetstreamBridge::Error)
        expect(outcome.message).to match(/use_outbox cannot run in a signal handler \(trap\).*publish from a thread the handler starts/)
        expect(outbox.count).to eq(0)
      end

      # Before, a SQLite row's mark waited for the app's next outbox write: an idle app left
      # it publishing, health counted it as backlog, and a relay run after duplicate_window
      # stored the event twice.
      it "marks a published row sent within a second while the app stays idle" do
        ActiveRecord::Base.transaction { publish_user(1) }
        started = monotonic
        sleep 0.02 until outbox.where(status: "sent").count == 1 || monotonic - started > 5
        expect(monotonic - started).to be < 3.0 # about a second (LINGER), with room for a loaded machine
      end

      it "counts in health only the rows not delivered yet, right after a publish" do
        ActiveRecord::Base.transaction { publish_user(1) } # its mark is still queued here
        expect(JetstreamBridge.health_check[:outbox]).to include(pending: 0, failed: 0)
        expect(outbox.pluck(:status)).to eq(%w[sent])
      end

      if kind == :sqlite
        # The mark waits for the write lock that an app thread holds in its transaction,
        # without holding the GVL: other threads go on, and the app's transaction commits.
        it "writes a mark that meets an app thread's open transaction without stalling the process" do
          db.connection.execute("CREATE TABLE IF NOT EXISTS app_notes (body TEXT)")
          lock_held = Queue.new
          holder = nil
          # Right after the event's row commits, another thread takes the write lock and
          # keeps it for 0.6 s: the event's mark, written after its publish, meets it.
          hook = ActiveSupport::Notifications.subscribe("sql.active_record") do |*, payload|
            next unless holder.nil? && payload[:sql].match?(/\Acommit/i)

            holder = Thread.new do
              ActiveRecord::Base.connection_pool.with_connection do |conn|
                conn.transaction do
                  conn.execute("INSERT INTO app_notes (body) VALUES ('held')")
                  lock_held << true
                  sleep 0.6 # holding the write lock
                end
              end
            end
            lock_held.pop
          end
          ticks = []
          ticker = Thread.new { loop { ticks << monotonic; sleep 0.005 } } # its gaps show a stalled process
          ActiveRecord::Base.transaction { publish_user(1) }
          expect(holder.join(5)).to be_truthy
          expect(JetstreamBridge::Outbox.flush_marks(timeout: 5)).to be(true)
          ticker.kill
          expect(outbox.pluck(:status)).to eq(%w[sent])
          expect(ticks.each_cons(2).map { |a, b| b - a }.max).to be < 0.45 # no thread stopped the others (the hold is 0.6 s)
          expect(db.connection.select_value("SELECT COUNT(*) FROM app_notes").to_i).to eq(1)
        ensure
          ActiveSupport::Notifications.unsubscribe(hook)
          ticker&.kill
        end
      end

      it "publishes nothing and leaves no row when the transaction rolls back" do
        ActiveRecord::Base.transaction do
          publish_user(1)
          raise ActiveRecord::Rollback
        end
        expect do
          ActiveRecord::Base.transaction do
            publish_user(2)
            raise "boom"
          end
        end.to raise_error(RuntimeError, "boom")
        expect(outbox.count).to eq(0)
        # Published after them, through the same connection: a publish from either would be stored before it.
        publish_user(3, event_id: "after-rollbacks")
        settle
        expect(published_ids).to eq(["after-rollbacks"])
      end

      it "handles savepoints: a rolled-back savepoint's event is dropped, a released one waits for the outer commit" do
        ids = {}
        ActiveRecord::Base.transaction do
          publish_user(1, event_id: "outer")
          ActiveRecord::Base.transaction(requires_new: true) do
            publish_user(2, event_id: "inner-rolled-back")
            raise ActiveRecord::Rollback
          end
          ActiveRecord::Base.transaction(requires_new: true) do
            publish_user(3, event_id: "inner-released")
          end
          ActiveRecord::Base.transaction do # joins the outer transaction
            publish_user(4, event_id: "joined")
          end
          ids[:inside] = published_ids
        end
        expect(ids[:inside]).to eq([])
        expect(published_ids).to contain_exactly("outer", "inner-released", "joined")
        settle
        expect(outbox.order(:id).pluck(:event_id, :status))
          .to eq([%w[outer sent], %w[inner-released sent], %w[joined sent]])
      end

      it "publishes a transaction's own events before those its records' after_commit callbacks publish" do
        ActiveRecord::Base.connection.create_table(:outbox_spec_orders, force: true) { |t| t.string :text }
        order = Class.new(ActiveRecord::Base) do
          self.table_name = "outbox_spec_orders"
          after_commit { JetstreamBridge.publish(event_type: "order.audited", payload: { id: id }, event_id: "audit-#{text}") }
        end
        ActiveRecord::Base.transaction do
          order.create!(text: "1")
          JetstreamBridge.publish(event_type: "order.created", payload: { id: 1 }, event_id: "created-1")
          ActiveRecord::Base.transaction(requires_new: true) do
            order.create!(text: "2")
            JetstreamBridge.publish(event_type: "order.created", payload: { id: 2 }, event_id: "created-2")
          end
        end
        expect(published_ids).to eq(%w[created-1 created-2 audit-1 audit-2])
        settle
        expect(outbox.order(:id).pluck(:event_id)).to eq(%w[created-1 created-2 audit-1 audit-2])
      ensure
        ActiveRecord::Base.connection.drop_table(:outbox_spec_orders, if_exists: true)
      end

      it "writes the rows in the transaction just before it commits; a row that cannot be written rolls it back" do
        ActiveRecord::Base.connection.create_table(:outbox_spec_notes, force: true) { |t| t.string :text }
        note = Class.new(ActiveRecord::Base) { self.table_name = "outbox_spec_notes" }
        publish_user(0, event_id: "taken")
        expect do
          ActiveRecord::Base.transaction do
            note.create!(text: "kept only if the events are")
            publish_user(1, event_id: "fresh")
            publish_user(2, event_id: "taken") # unique index on event_id
          end
        end.to raise_error(ActiveRecord::RecordNotUnique)
        expect(note.count).to eq(0)
        expect(outbox.pluck(:event_id)).to eq(["taken"])
        expect(published_ids).to eq(["taken"])
      ensure
        ActiveRecord::Base.connection.drop_table(:outbox_spec_notes, if_exists: true)
      end

      it "inside a non-joinable transaction (transactional test fixtures) publishes when its own savepoint is released" do
        ActiveRecord::Base.transaction(joinable: false) do
          publish_user(1, event_id: "in-fixture")
          expect(published_ids).to eq(["in-fixture"])
          ActiveRecord::Base.transaction do # the test's own transaction: a savepoint
            publish_user(2, event_id: "in-fixture-txn")
            expect(published_ids).to eq(["in-fixture"])
          end
          expect(published_ids).to eq(%w[in-fixture in-fixture-txn])
          raise ActiveRecord::Rollback
        end
        expect(outbox.count).to eq(0)
      end

      it "writes and publishes at once outside a transaction" do
        expect(publish_user(1, event_id: "now")).to be(true)
        expect(published_ids).to eq(["now"])
        expect(only_row.status).to eq("sent")
      end

      it "publishes many events of one transaction as one batch, with publish_batch too" do
        ActiveRecord::Base.transaction do
          50.times { |i| publish_user(i) }
          result = JetstreamBridge.publish_batch(Array.new(20) { |i| { event_type: "user.created", payload: { id: 100 + i } } })
          expect(result.published).to eq(20)
        end
        settle
        expect(outbox.where(status: "sent").count).to eq(70)
        expect(published_ids).to match_array(outbox.pluck(:event_id))
      end

      it "raises for bad input before writing anything" do
        expect { JetstreamBridge.publish(payload: { id: 1 }) }.to raise_error(ArgumentError, /event_type/)
        expect(outbox.count).to eq(0)
      end

      it "marks a row failed with attempts and last_error when the server refuses it, and the relay retries it" do
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, subject: "nowhere.#{bridge_env}")
        row = only_row
        expect(row.status).to eq("failed")
        # At least the direct attempt (a relay still running from another example may
        # already have retried it once under load).
        attempts = row.attempts
        expect(attempts).to be >= 1
        expect(row.last_error).to match(/StreamNotFoundError/)
        result = JetstreamBridge::OutboxRelay.new.flush(due_only: false) # before its retry delay
        expect(result.failed).to eq(1)
        expect(row.reload.attempts).to be > attempts
      end
    end

    context "with the relay" do
      before { configure_bridge(use_outbox: true) }

      def insert_rows(count, status: "pending", updated_at: Time.now)
        now = Time.now
        rows = Array.new(count) do |i|
          built = JetstreamBridge::Event.build(event_type: "user.created", payload: { id: i })
          { event_id: built.event_id, subject: built.subject, payload: JSON.parse(built.json), headers: { "Nats-Msg-Id" => built.event_id },
            status: status, attempts: 0, enqueued_at: now, created_at: now, updated_at: updated_at }
        end
        outbox.insert_all!(rows)
        rows.map { |r| r[:event_id] }
      end

      it "sends pending and failed rows oldest first, in batches, and marks them sent" do
        ids = insert_rows(30) + insert_rows(5, status: "failed")
        outbox.where(event_id: ids.first(3)).update_all(status: "failed", attempts: 2, last_error: "earlier", updated_at: Time.now - 600)
        result = JetstreamBridge::OutboxRelay.new(batch_size: 7).flush
        expect(result.to_h.slice(:claimed, :sent, :failed, :duplicates)).to eq(claimed: 35, sent: 35, failed: 0, duplicates: 0)
        expect(published_ids).to eq(ids)
        expect(outbox.unsent.count).to eq(0)
        expect(outbox.sent.count).to eq(35)
        expect(outbox.where(event_id: ids.first(3)).pluck(:attempts, :last_error)).to all(eq([3, nil]))
        expect(outbox.where.not(sent_at: nil).count).to eq(35)
      end

      it "sends a failed row again only after a delay that doubles with its attempts" do
        ids = insert_rows(4, status: "failed")
        failed = ->(id, attempts, ago) { outbox.where(event_id: id).update_all(attempts: attempts, updated_at: Time.now - ago) }
        failed.(ids[0], 2, 0.5) # due 2 s after its failure (room for a slow flush)
        failed.(ids[1], 3, 0.5) # due after 4 s
        failed.(ids[2], 3, 5)   # due
        failed.(ids[3], 30, 299) # due after 300 s, the cap
        result = JetstreamBridge::OutboxRelay.new.flush
        expect(published_ids).to eq([ids[2]])
        expect(result.claimed).to eq(1)
        outbox.where(event_id: ids[0]).update_all(updated_at: Time.now - 2.5)
        JetstreamBridge::OutboxRelay.new.flush
        expect(published_ids).to eq([ids[2], ids[0]])
        expect(JetstreamBridge::Outbox.retry_delay(30)).to eq(300.0) # capped: ids[3] waits 5 minutes
      end

      it "makes a row dead once outbox_max_attempts are used, and at once for an error no retry fixes; retry revives it" do
        configure_bridge(use_outbox: true, outbox_max_attempts: 2)
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, subject: "nowhere.#{bridge_env}")
        refused = only_row
        expect(refused).to have_attributes(status: "failed", attempts: 1)
        JetstreamBridge::OutboxRelay.new.flush(due_only: false)
        expect(refused.reload).to have_attributes(status: "dead", attempts: 2)
        expect(JetstreamBridge::OutboxRelay.new.flush(due_only: false).claimed).to eq(0) # dead rows are left alone
        expect(outbox.dead.count).to eq(1)
        expect(outbox.unsent.count).to eq(0)

        max_payload = native_client.server_info["max_payload"]
        too_large, = insert_rows(1)
        outbox.where(event_id: too_large).update_all(payload: { "blob" => "x" * max_payload })
        JetstreamBridge::OutboxRelay.new.flush
        expect(outbox.find_by!(event_id: too_large)).to have_attributes(status: "dead", attempts: 1)
        expect(outbox.find_by!(event_id: too_large).last_error).to match(/PayloadTooLargeError/)

        expect(JetstreamBridge::Outbox.retry_dead(ids: [refused.id])).to eq(1)
        expect(refused.reload).to have_attributes(status: "failed", attempts: 0)
        expect(outbox.dead.pluck(:event_id)).to eq([too_large])
        expect(JetstreamBridge::Outbox.retry_dead).to eq(1)
        expect(outbox.dead.count).to eq(0)
      end

      it "prunes only sent rows older than the cutoff, in batches" do
        ids = insert_rows(6)
        old = Time.now - (8 * 86_400)
        statuses = %w[sent sent pending failed dead publishing]
        ids.zip(statuses).each { |id, status| outbox.where(event_id: id).update_all(status: status, sent_at: old, updated_at: old) }
        recent = insert_rows(1).first
        outbox.where(event_id: recent).update_all(status: "sent", sent_at: Time.now - 86_400)
        progress = []
        expect(JetstreamBridge::Outbox.prune(older_than: "7d") { |n| progress << n }).to eq(2)
        expect(progress).to eq([2])
        expect(outbox.pluck(:status)).to match_array(%w[pending failed dead publishing sent])
        expect(outbox.sent.pluck(:event_id)).to eq([recent])

        old_sent = insert_rows(25, status: "sent")
        outbox.where(event_id: old_sent).update_all(sent_at: old)
        table = JetstreamBridge::Outbox.table
        batches = []
        deleted = JetstreamBridge::Prune.rows(table, status: "sent", column: "sent_at", older_than: "7d", batch: 10) { |n| batches << n }
        expect([deleted, batches]).to eq([25, [10, 20, 25]])
        expect { JetstreamBridge::Outbox.prune(older_than: "last week") }.to raise_error(JetstreamBridge::ConfigurationError, /older_than/)
        expect(outbox.count).to eq(5)
      end

      it "leaves fresh publishing rows alone and reclaims stale ones (a relay that died after the ack)" do
        fresh = insert_rows(2, status: "publishing")
        stale = insert_rows(3, status: "publishing", updated_at: Time.now - 120)
        # The dead relay's publish reached the server: resending it is a dropped duplicate.
        stale.first(2).each do |id|
          row = outbox.find_by!(event_id: id)
          publish_as_is(row.subject, JSON.generate(row.payload), id)
        end
        result = JetstreamBridge::OutboxRelay.new(lease: 30).flush
        expect(result.claimed).to eq(3)
        expect(result.duplicates).to eq(2)
        expect(published_ids).to eq(stale)
        expect(outbox.where(event_id: stale).pluck(:status)).to all(eq("sent"))
        expect(outbox.where(event_id: fresh).pluck(:status)).to all(eq("publishing"))
      end

      # A row left publishing longer than duplicate_window (a relay run after an outage) may
      # be stored a second time: the relay says so, naming the row.
      it "warns, naming the row, when it sends again a row left publishing longer than duplicate_window" do
        within_window = insert_rows(1, status: "publishing", updated_at: Time.now - 60)
        beyond_window = insert_rows(1, status: "publishing", updated_at: Time.now - 300)
        result = JetstreamBridge::OutboxRelay.new(lease: 30).flush
        expect(result.sent).to eq(2)
        late = log_output.lines.grep(/left publishing longer than duplicate_window/)
        expect(late.size).to eq(1)
        row = outbox.find_by!(event_id: beyond_window.first)
        expect(late.first).to include("1 row(s)", "#{row.id} (#{row.event_id})")
        expect(late.first).not_to include(within_window.first)
      end

      it "takes interval and lease as durations, and refuses to run with a lease not below duplicate_window" do
        relay = JetstreamBridge::OutboxRelay.new(interval: "250ms", lease: "90s")
        expect([relay.interval, relay.lease]).to eq([0.25, 90.0])
        expect { JetstreamBridge::OutboxRelay.new(lease: "soon") }.to raise_error(JetstreamBridge::ConfigurationError, /lease/)
        long = JetstreamBridge::OutboxRelay.new(lease: "2m") # duplicate_window is 2m by default
        expect { long.start }.to raise_error(JetstreamBridge::ConfigurationError, /lease \(120.0s\) must be shorter than duplicate_window/)
        expect { long.run! }.to raise_error(JetstreamBridge::ConfigurationError, /duplicate_window/)
        insert_rows(1)
        expect { long.flush }.to raise_error(JetstreamBridge::ConfigurationError, /duplicate_window/) # rake outbox:flush
        expect(outbox.pluck(:status)).to eq(%w[pending])
      end

      it "runs until stopped, on a thread, sending rows as they appear; refuses a second run! meanwhile" do
        relay = JetstreamBridge::OutboxRelay.new(interval: 0.1).start
        ids = insert_rows(10)
        eventually { outbox.where(status: "sent").count == 10 }
        more = insert_rows(5)
        eventually { outbox.where(status: "sent").count == 15 }
        second = Thread.new { relay.run! rescue $! } # rubocop:disable Style/RescueModifier
        expect(second.join(5)&.value).to be_a(JetstreamBridge::Error).and(have_attributes(message: /outbox relay is already running/))
        relay.stop
        expect(relay.running?).to be(false)
        expect(published_ids).to eq(ids + more)
        relay.start # runs again once stopped
        again = insert_rows(1)
        eventually { outbox.where(status: "sent").count == 16 }
        relay.stop
        expect(published_ids).to eq(ids + more + again)
      end

      # A relay in a forked process with its own database and NATS connections; reports the
      # row ids it claimed. exit! skips the parent's at_exit hooks (servers, databases).
      def relay_process(gate)
        Forked.start do
          # The parent's connections are left alone (closing them would end the parent's sessions).
          ActiveRecord::Base.connection_pool.discard!
          ActiveRecord::Base.connection_handler = ActiveRecord::ConnectionAdapters::ConnectionHandler.new
          ActiveRecord::Base.establish_connection(db.config)
          # Connected before the gate opens, so both relays start claiming together
          # (otherwise the first could send every row before the second has connected).
          JetstreamBridge::Connection.client
          sleep 0.005 until File.exist?(gate)
          result = JetstreamBridge::OutboxRelay.new(batch_size: 50).flush
          { ids: result.claimed_ids, duplicates: result.duplicates }
        end
      end

      it "never lets two relays (two processes) send the same row" do
        ids = insert_rows(1_500)
        JetstreamBridge.ensure_topology!
        gate = File.join(Dir.mktmpdir("relay-gate-"), "go")
        children = Array.new(2) { relay_process(gate) }
        File.write(gate, "")
        reports = children.map(&:report)
        claimed = reports.map { |r| r["ids"] }
        expect(claimed[0] & claimed[1]).to eq([])
        expect(claimed.flatten.size).to eq(1_500)
        expect(claimed).to all(satisfy(&:any?))
        expect(reports.sum { |r| r["duplicates"] }).to eq(0)
        expect(published_ids.size).to eq(1_500)
        expect(published_ids.sort).to eq(ids.sort)
        expect(outbox.where(status: "sent").count).to eq(1_500)
      end
    end

    context "with a custom outbox_model with only the required columns" do
      before(:all) do
        custom_db = ActiveRecordDb.public_send(kind).activate!
        unless ActiveRecord::Base.connection.table_exists?("my_outbox")
          custom_db.migrate_code(<<~RUBY)
            create_table :my_outbox do |t|
              t.string :event_id
              t.string :subject
              t.text :payload
              t.string :status, default: "pending"
            end
            create_table :bad_outbox do |t|
              t.string :event_id
              t.string :subject
              t.text :payload
            end
          RUBY
        end
        OutboxSpec.const_set(:BadOutbox, Class.new(ActiveRecord::Base) { self.table_name = "bad_outbox" }) unless OutboxSpec.const_defined?(:BadOutbox)
        stub_const_name = "OutboxSpec::MyOutbox"
        OutboxSpec.const_set(:MyOutbox, Class.new(ActiveRecord::Base) { self.table_name = "my_outbox" }) unless OutboxSpec.const_defined?(:MyOutbox)
        @model_name = stub_const_name
      end

      before do
        db.truncate!("my_outbox")
        configure_bridge(use_outbox: true, outbox_model: @model_name)
      end

      it "records, publishes and relays with the columns it has" do
        ActiveRecord::Base.transaction { publish_user(1, event_id: "custom-1") }
        settle
        expect(OutboxSpec::MyOutbox.pluck(:event_id, :status)).to eq([%w[custom-1 sent]])
        OutboxSpec::MyOutbox.create!(event_id: "custom-2", subject: JetstreamBridge.config.source_subject,
                                     payload: JetstreamBridge::Event.build(event_type: "x.y", payload: {}, event_id: "custom-2").json)
        expect(JetstreamBridge::OutboxRelay.new.flush.sent).to eq(1)
        expect(published_ids).to eq(%w[custom-1 custom-2])
        expect(OutboxSpec::MyOutbox.pluck(:status)).to all(eq("sent"))
      end

      it "names a table that lacks a required column" do
        configure_bridge(use_outbox: true, outbox_model: "OutboxSpec::BadOutbox")
        expect { publish_user(1) }.to raise_error(JetstreamBridge::ConfigurationError, /bad_outbox lacks column\(s\) status/)
      end
    end

    context "with outbox_delivery :background" do
      before { configure_bridge(use_outbox: true, outbox_delivery: :background) }

      # The event ids in the order committed! handed them to delivery (one lock around the
      # hand-over, so the order recorded is the order queued).
      def record_hand_over
        handed = []
        lock = Mutex.new
        allow(JetstreamBridge::Outbox).to receive(:dispatch).and_wrap_original do |original, t, entries|
          lock.synchronize do
            handed.concat(entries.map(&:event_id))
            original.call(t, entries)
          end
        end
        handed
      end

      it "delivers every committed event once, in commit order, from several threads, and health counts none as backlog" do
        handed = record_hand_over
        # sqlite3 < 2 waits for SQLite's write lock in C holding the GVL, so a thread waiting
        # for another's open transaction stops it from committing until busy_timeout
        # (BusyException, seen under load on Debian 12): the app's transactions take turns
        # there, still from four threads, interleaved.
        serial = db.sqlite? && Gem::Version.new(SQLite3::VERSION) < Gem::Version.new("2") ? Mutex.new : nil
        in_turn = ->(&work) { serial ? serial.synchronize(&work) : work.call }
        threads = Array.new(4) do |n|
          Thread.new do
            ActiveRecord::Base.connection_pool.with_connection do
              25.times do |i|
                in_turn.call { ActiveRecord::Base.transaction { (1 + (i % 3)).times { |k| publish_user(i, event_id: "t#{n}-#{i}-#{k}") } } }
              end
            end
          end
        end
        threads.each(&:join)
        expect(JetstreamBridge.health_check[:outbox]).to include(pending: 0, failed: 0) # waits for the deliveries queued
        expect(outbox.where.not(status: "sent").count).to eq(0)
        expect(outbox.count).to eq(4 * 49) # 1, 2 or 3 events a transaction
        expect(handed.size).to eq(4 * 49)
        expect(published_ids).to eq(handed)
        expect(published.size).to eq(outbox.count)
        expect(Thread.list.map(&:name)).to include("jetstream_bridge-outbox-delivery")
      end

      it "returns from publish before the ack: with NATS paused the commit returns at once, and the event is sent later" do
        server = NatsServer.new.start
        begin
          configure_bridge(server: server, use_outbox: true, outbox_delivery: :background, request_timeout: "2s")
          JetstreamBridge.ensure_topology!
          ActiveRecord::Base.transaction { publish_user(0, event_id: "before-pause") }
          settle
          server.send(:signal, "STOP")
          started = monotonic
          3.times { |i| ActiveRecord::Base.transaction { expect(publish_user(i, event_id: "paused-#{i}")).to be(true) } }
          expect(monotonic - started).to be < 1.0 # inline, each would wait for the ack (up to request_timeout)
          expect(outbox.where(event_id: %w[paused-0 paused-1 paused-2]).pluck(:status)).to all(eq("publishing"))
        ensure
          server.send(:signal, "CONT")
        end
        relay = JetstreamBridge::OutboxRelay.new
        eventually(timeout: 20, interval: 0.2) do
          relay.flush(due_only: false)
          JetstreamBridge::Outbox.flush_marks
          outbox.where(status: "sent").count == 4
        end
        ids = published_ids
        expect(ids.sort).to eq(%w[before-pause paused-0 paused-1 paused-2])
      ensure
        server&.cleanup
      end

      it "gives the pool back the connections its delivery and marker threads used, once their work is done" do
        3.times { |i| ActiveRecord::Base.transaction { publish_user(i) } }
        settle # both threads are past their work (and its connection block)
        threads = Thread.list.select { |t| t.name&.match?(/jetstream_bridge-outbox-(delivery|marker)/) }
        expect(threads.map(&:name)).to contain_exactly(/delivery/, /marker/)
        # ActiveRecord 7.2+ keeps a connection leased for the thread's life once model.connection
        # is called inside with_connection (unless the block prevents a permanent checkout).
        owners = ActiveRecord::Base.connection_pool.connections.select(&:in_use?).map(&:owner)
        expect(owners & threads).to be_empty
      end

      it "delivers and marks what is queued when reset! runs" do
        ids = Array.new(30) do |i|
          ActiveRecord::Base.transaction { publish_user(i, event_id: "reset-#{i}") }
          "reset-#{i}"
        end
        env = bridge_env
        JetstreamBridge.reset!
        expect(outbox.where(event_id: ids, status: "sent").count).to eq(30)
        eventually { Thread.list.none? { |t| t.name == "jetstream_bridge-outbox-delivery" } } # its thread ends
        configure_bridge(env: env, use_outbox: true)
        expect(published_ids).to eq(ids)
      end

      it "delivers what a process published before it exits (the at_exit drain), nothing left pending" do
        ids = Array.new(20) { |i| "exit-#{i}" }
        code = <<~RUBY
          require "active_record"
          require "jetstream_bridge"
          ActiveRecord::Base.establish_connection(#{db.config.inspect})
          JetstreamBridge.configure do |c|
            c.nats_urls = #{shared_server.url.inspect}
            c.env = #{bridge_env.inspect}
            c.app_name = "app"
            c.destination_app = "other"
            c.use_outbox = true
            c.outbox_delivery = :background
          end
          #{ids.inspect}.each do |id|
            ActiveRecord::Base.transaction { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: id) }
          end
          puts "published"
        RUBY
        out, status = ChildRuby.capture("-e", code)
        expect(status).to be_success, out
        expect(outbox.where(event_id: ids).pluck(:status)).to eq(["sent"] * 20)
        expect(published_ids).to eq(ids)
      end

      it "gives a forked child its own delivery thread" do
        ActiveRecord::Base.transaction { publish_user(0, event_id: "parent-0") }
        settle
        parent_delivery = JetstreamBridge::ProcessState.current.delivery
        report = Forked.start do
          # ActiveRecord discards the parent's pools after fork (ForkTracker): the child's
          # threads, the delivery thread too, connect again on first use.
          ActiveRecord::Base.transaction { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "child-0") }
          delivery = JetstreamBridge::ProcessState.current.delivery
          flushed = JetstreamBridge::Outbox.flush_marks
          { own: !delivery.equal?(parent_delivery), flushed: flushed,
            now: Thread.list.map(&:name).include?("jetstream_bridge-outbox-delivery") }
        end.report
        expect(report).to eq("own" => true, "flushed" => true, "now" => true)
        ActiveRecord::Base.transaction { publish_user(1, event_id: "parent-1") } # the parent's thread goes on
        settle
        expect(outbox.order(:id).pluck(:event_id, :status)).to eq([%w[parent-0 sent], %w[child-0 sent], %w[parent-1 sent]])
        expect(published_ids).to eq(%w[parent-0 child-0 parent-1])
      end

      it "refuses an outbox_delivery it does not know, naming the setting and its values" do
        expect { JetstreamBridge.configure { |c| c.outbox_delivery = :later } }
          .to raise_error(JetstreamBridge::ConfigurationError, /outbox_delivery must be :inline or :background, got :later/)
        expect(JetstreamBridge.config.outbox_delivery).to eq(:background)
      end
    end

    context "with NATS down" do
      around do |example|
        @server = NatsServer.new.start
        example.run
      ensure
        @server&.cleanup
      end

      it "keeps working, loses nothing, and the relay delivers every event exactly once after NATS returns" do
        configure_bridge(server: @server, use_outbox: true, request_timeout: "1s", connect_timeout: "1s")
        JetstreamBridge.ensure_topology!
        publish_user(0, event_id: "before-outage")
        @server.stop

        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        ids = Array.new(1_000) do |i|
          ActiveRecord::Base.transaction { publish_user(i, event_id: "down-#{i}") }
          "down-#{i}"
        end
        elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
        expect(elapsed).to be < 30
        expect(outbox.where(event_id: ids).count).to eq(1_000)
        expect(outbox.where(event_id: ids, status: "sent").count).to eq(0)
        expect(outbox.where(event_id: ids).distinct.pluck(:status)).to all(satisfy { |s| %w[pending failed].include?(s) })

        @server.start
        relay = JetstreamBridge::OutboxRelay.new(batch_size: 200)
        eventually(timeout: 30, interval: 0.2) do
          relay.flush
          outbox.where(status: "sent").count == 1_001
        end
        messages = published
        expect(messages.map(&:first).uniq.size).to eq(1_001)
        expect(messages.size).to eq(1_001)
        expect(messages.map(&:first)).to include(*ids)
        # Direct publishing resumes once NATS is back.
        publish_user(1, event_id: "after-outage")
        settle
        expect(outbox.find_by!(event_id: "after-outage").status).to eq("sent")
      end

      it "relays the envelope byte for byte as publish wrote it (a direct publish's bytes), NUL and all" do
        configure_bridge(server: @server, use_outbox: true, request_timeout: "1s", connect_timeout: "1s")
        JetstreamBridge.ensure_topology!
        @server.stop
        event = { event_type: "user.created", event_id: "bytes-1", trace_id: "t-1", occurred_at: "2025-08-13T21:00:00Z",
                  payload: { z: 1, id: 7, ratio: 1.0e+15, big: 2**70, note: "</b> é", nul: "a\u0000b", a: [1, { "c" => nil }] } }
        ActiveRecord::Base.transaction { JetstreamBridge.publish(**event) } # written; NATS is down
        direct_bytes = JetstreamBridge::Event.build(event).json # what a direct publish sends

        @server.start
        eventually(timeout: 20, interval: 0.2) { JetstreamBridge::OutboxRelay.new.flush.sent == 1 }
        _, body, = published.find { |id, _, _| id == "bytes-1" }
        expect(body.b).to eq(direct_bytes.b)
        expect(JSON.parse(body)["payload"]["nul"]).to eq("a\u0000b")
      end

      it "records the event and returns when NATS was never reachable" do
        configure_bridge(server: "nats://127.0.0.1:#{NatsServer.free_ports(1).first}", use_outbox: true,
                         connect_timeout: "1s")
        expect(publish_user(1, event_id: "never")).to be(true)
        ActiveRecord::Base.transaction { publish_user(2, event_id: "never-2") }
        expect(outbox.order(:id).pluck(:event_id, :status)).to eq([%w[never pending], %w[never-2 pending]])
        expect(log_output).to match(/events stay in the outbox/)
        relay = JetstreamBridge::OutboxRelay.new
        expect(relay.flush.claimed).to eq(0)
        expect(relay.nats_available?).to be(false)
      end
    end
  end

  RSpec.describe "Transactional outbox (SQLite)" do
    it_behaves_like "a transactional outbox", :sqlite
  end

  RSpec.describe "Transactional outbox (PostgreSQL)" do
    it_behaves_like "a transactional outbox", :postgres
  end

  RSpec.describe "Outbox marks on PostgreSQL" do
    let(:db) { ActiveRecordDb.postgres }

    before do
      skip "PostgreSQL is not reachable" unless ActiveRecordDb.postgres_available?
      db.activate!.truncate!
      configure_bridge(use_outbox: true)
    end

    it "marks rows sent in a transaction of its own that does not wait for the WAL flush" do
      statements = []
      marker_sql = lambda do |*, payload|
        statements << payload[:sql] if Thread.current.name == "jetstream_bridge-outbox-marker"
      end
      ActiveSupport::Notifications.subscribed(marker_sql, "sql.active_record") do
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "mark-async")
        expect(JetstreamBridge::Outbox.flush_marks).to be(true)
      end
      expect(JetstreamBridge::OutboxEvent.find_by!(event_id: "mark-async").status).to eq("sent")
      setting = statements.index("SET LOCAL synchronous_commit TO OFF")
      expect(setting).not_to be_nil, statements.inspect
      expect(statements[setting + 1]).to start_with("UPDATE") # the mark, in that transaction
    end

    # The marker commits its own transaction asynchronously (SET LOCAL synchronous_commit):
    # never an app's transaction that a mark runs in (a stopped marker marks on the caller's thread).
    it "leaves synchronous_commit of an app's transaction alone when a mark runs in it" do
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "mark-in-txn")
      expect(JetstreamBridge::Outbox.flush_marks).to be(true)
      row = JetstreamBridge::OutboxEvent.find_by!(event_id: "mark-in-txn")
      row.update_columns(status: "publishing", sent_at: nil)
      marker = JetstreamBridge::ProcessState.current.marker
      marker.stop(5)
      table = JetstreamBridge::Outbox.table
      setting = ActiveRecord::Base.transaction do
        marker.push(table, [JetstreamBridge::Outbox::Entry.new(row.id, nil, row.event_id)]) # worked here: stopped
        ActiveRecord::Base.connection.select_value("SHOW synchronous_commit")
      end
      expect(setting).to eq("on")
      expect(row.reload.status).to eq("sent")
    end
  end

  RSpec.describe "JetstreamBridge without ActiveRecord" do
    it "loads and publishes in a process that never loads ActiveRecord or Rails" do
      configure_bridge
      code = <<~RUBY
        require "jetstream_bridge"
        JetstreamBridge.configure do |c|
          c.nats_urls = #{shared_server.url.inspect}
          c.env = #{bridge_env.inspect}
          c.app_name = "app"
          c.destination_app = "other"
        end
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "no-ar")
        # The models load when named (autoload), so publishing must leave them unloaded.
        puts [defined?(ActiveRecord), defined?(Rails), JetstreamBridge.autoload?(:OutboxEvent) ? :unloaded : :loaded].inspect
      RUBY
      out, status = ChildRuby.capture("-e", code)
      expect(status).to be_success, out
      expect(out.lines.last.strip).to eq("[nil, nil, :unloaded]")
      expect(stream_messages.map { |_, body, _| JSON.parse(body)["event_id"] }).to eq(["no-ar"])
    end
  end
end
