# frozen_string_literal: true

require "fileutils"

require "json"
require "net/http"
require "securerandom"
require "sqlite3"
require "pg"
require_relative "../support/rails_app"
require_relative "../support/nats_server"
require_relative "../support/nats_api"

# The seed README's Rails path, end to end, in a real app made by `rails new` with this gem
# by path: install + health_check generators, db:migrate on SQLite and on PostgreSQL, the
# outbox inside ActiveRecord transactions, the relay and consumer rake tasks, the inbox,
# the Railtie, the health endpoint over real HTTP and the rake tasks' exit statuses.
# The app is built once for the file; each example gets its own nats-server.
module RailsIntegrationSpec
  APP_NAME = "jb_rails_app"
  DEST = "other_app"
  STREAM = "development-jetstream-bridge-stream"
  PUBLISH_SUBJECT = "development.#{APP_NAME}.sync.#{DEST}"
  CONSUME_SUBJECT = "development.#{DEST}.sync.#{APP_NAME}"

  WIDGET_MIGRATION = <<~RUBY
    class CreateWidgets < ActiveRecord::Migration[6.1]
      def change
        create_table :widgets do |t|
          t.string :event_id
          t.integer :n
          t.boolean :in_executor
          t.timestamps
        end
      end
    end
  RUBY

  WIDGET_MODEL = <<~RUBY
    class Widget < ApplicationRecord
    end
  RUBY

  # The README's handler object: call(event, subject, deliveries). Fails until the delivery
  # named by payload["fail_until"], after writing its row (which the inbox rolls back).
  WIDGET_HANDLER = <<~RUBY
    class WidgetHandler
      def call(event, _subject, deliveries)
        payload = event["payload"]
        Widget.create!(event_id: event["event_id"], n: payload["n"],
                       in_executor: Rails.application.executor.active?)
        raise IOError, "transient failure \#{deliveries}" if deliveries < payload.fetch("fail_until", 0).to_i
      end
    end
  RUBY

  RSpec.describe "Rails integration (generated app)", :rails_app do
    before(:all) do
      @app = RailsApp.new(name: APP_NAME).create!.generate!("jetstream_bridge:install", "jetstream_bridge:health_check")
      File.write(@app.path("db/migrate/20000101000000_create_widgets.rb"), WIDGET_MIGRATION)
      File.write(@app.path("app/models/widget.rb"), WIDGET_MODEL)
      File.write(@app.path("app/models/widget_handler.rb"), WIDGET_HANDLER)
      # Shorter retry delays for the specs (the generated initializer says 1s 5s 15s 30s).
      File.write(@app.path("config/initializers/jetstream_bridge.rb"),
                 "#{@app.read('config/initializers/jetstream_bridge.rb')}\n" \
                 "JetstreamBridge.config.backoff = ENV[\"JB_BACKOFF\"].split(\",\") if ENV[\"JB_BACKOFF\"]\n")
      @app.rails!("db:migrate")
      @pg_db = "jb_rails_#{Process.pid}_#{SecureRandom.hex(3)}"
      @app.rails!("db:create", "db:migrate", env: { "DATABASE_URL" => pg_url })
    end

    after(:all) do
      @app&.cleanup
      if @pg_db
        PG.connect(host: "127.0.0.1", dbname: "postgres") { |c| c.exec("DROP DATABASE IF EXISTS #{@pg_db} WITH (FORCE)") }
      end
    end

    around do |example|
      @nats = NatsServer.new.start
      example.run
    ensure
      @nats&.cleanup
    end

    attr_reader :app, :nats

    def pg_url = "postgres://127.0.0.1:5432/#{@pg_db}"

    def app_env(kind = :sqlite, **extra)
      env = { "NATS_URLS" => nats.url, "APP_NAME" => nil, "DESTINATION_APP" => nil, "JB_BACKOFF" => "200ms" }
      env["DATABASE_URL"] = pg_url if kind == :postgres
      env.merge(extra.transform_keys(&:to_s))
    end

    # Runs Ruby in the booted app; returns the JSON it printed on a "JSON:" line.
    def app_json(code, kind = :sqlite, **env)
      out, status = app.runner(code, env: app_env(kind, **env))
      expect(status).to be_success, "runner failed:\n#{out}"
      line = out.lines.reverse.find { |l| l.start_with?("JSON:") }
      expect(line).not_to be_nil, "no JSON line in:\n#{out}"
      JSON.parse(line.delete_prefix("JSON:"))
    end

    # bin/rake, as the README shows the tasks (VAR=value arguments go on the command line).
    def rake(task, kind = :sqlite, args: [], **env)
      app.run(RbConfig.ruby, "bin/rake", task, *args, env: app_env(kind, **env))
    end

    # Rows from the app's database, read directly (no Rails boot).
    def query(kind, sql)
      if kind == :sqlite
        db = SQLite3::Database.new(app.sqlite_database)
        db.busy_timeout = 5_000
        db.execute(sql)
      else
        PG.connect(host: "127.0.0.1", dbname: @pg_db) { |c| c.exec(sql).values }
      end
    ensure
      db&.close
    end

    def reset_tables(kind)
      %w[jetstream_outbox_events jetstream_inbox_events widgets].each { |t| query(kind, "DELETE FROM #{t}") }
    end

    def count(kind, sql) = query(kind, sql).first.first.to_i

    # Every message in the app's stream on this example's server: [[subject, event_id, headers], ...].
    def stream_events
      info = NatsApi.request(nats.url, "$JS.API.STREAM.INFO.#{STREAM}", "")
      return [] if info["error"]

      last = info.dig("state", "last_seq").to_i
      (1..last).filter_map do |seq|
        reply = NatsApi.request(nats.url, "$JS.API.STREAM.MSG.GET.#{STREAM}", { seq: seq })
        next if reply["error"]

        msg = reply["message"]
        body = JSON.parse(msg["data"].unpack1("m"))
        headers = msg["hdrs"] ? msg["hdrs"].unpack1("m") : ""
        [msg["subject"], body["event_id"], headers]
      end
    end

    def http_get(port, path)
      Net::HTTP.start("127.0.0.1", port, open_timeout: 5, read_timeout: 30) { |h| h.get(path) }
    end

    %i[sqlite postgres].each do |kind|
      context "on #{kind == :sqlite ? 'SQLite' : 'PostgreSQL'}" do
        before { reset_tables(kind) }

        it "publishes an event written in a committed transaction, and nothing for a rolled-back one" do
          result = app_json(<<~RUBY, kind)
            ActiveRecord::Base.transaction do
              Widget.create!(n: 1)
              JetstreamBridge.publish(resource_type: "widget", event_type: "created", payload: { id: 1 }, event_id: "committed-1")
            end
            ActiveRecord::Base.transaction do
              Widget.create!(n: 2)
              JetstreamBridge.publish(resource_type: "widget", event_type: "created", payload: { id: 2 }, event_id: "rolled-back-2")
              raise ActiveRecord::Rollback
            end
            JetstreamBridge::Outbox.flush_marks # rows are marked sent in the background (not on SQLite)
            rows = JetstreamBridge::OutboxEvent.order(:id).pluck(:event_id, :status)
            puts "JSON:" + JSON.generate(rows: rows, widgets: Widget.count, logger: JetstreamBridge.config.logger.equal?(Rails.logger))
          RUBY
          expect(result).to eq("rows" => [%w[committed-1 sent]], "widgets" => 1, "logger" => true)
          events = stream_events
          expect(events.map { |e| e[0..1] }).to eq([[PUBLISH_SUBJECT, "committed-1"]])
          expect(events.first[2]).to include("Nats-Msg-Id: committed-1")
        end

        it "keeps 1,000 events written while NATS is down and the flush task delivers each exactly once" do
          nats.stop
          result = app_json(<<~RUBY, kind)
            started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
            1_000.times do |i|
              ActiveRecord::Base.transaction do
                Widget.create!(n: i)
                JetstreamBridge.publish(event_type: "widget.created", payload: { id: i }, event_id: "down-\#{i}")
              end
            end
            puts "JSON:" + JSON.generate(seconds: Process.clock_gettime(Process::CLOCK_MONOTONIC) - started,
                                         statuses: JetstreamBridge::OutboxEvent.group(:status).count)
          RUBY
          expect(result["statuses"].values.sum).to eq(1_000)
          expect(result["statuses"].keys - %w[pending failed]).to eq([])
          expect(result["seconds"]).to be < 60

          out, status = rake("jetstream_bridge:outbox:flush", kind)
          expect(status.exitstatus).to eq(1), out
          expect(out).to match(/NATS is unreachable/)

          nats.start
          out, status = rake("jetstream_bridge:outbox:flush", kind)
          expect(status.exitstatus).to eq(0), out
          expect(out).to match(/1000 sent \(0 duplicates\), 0 failed/)
          ids = stream_events.map { |e| e[1] }
          expect(ids.size).to eq(1_000)
          expect(ids.uniq.size).to eq(1_000)
          expect(count(kind, "SELECT COUNT(*) FROM jetstream_outbox_events WHERE status = 'sent' AND sent_at IS NOT NULL")).to eq(1_000)
        end

        it "consumes with the inbox from `bin/rake jetstream_bridge:consume HANDLER=WidgetHandler` until SIGTERM" do
          ensure_stream
          publish_raw(CONSUME_SUBJECT, envelope("twice", n: 1), times: 2)          # the same event delivered twice
          publish_raw(CONSUME_SUBJECT, envelope("flaky", n: 2, fail_until: 3))     # fails twice, then succeeds
          health_file = app.path("tmp/consume_#{kind}.alive")
          FileUtils.rm_f(health_file)
          pid = app.spawn_process(RbConfig.ruby, "bin/rake", "jetstream_bridge:consume", "HANDLER=WidgetHandler",
                                  "HEALTH_FILE=#{health_file}", env: app_env(kind), log: "log/consume_#{kind}.log")
          begin
            eventually(timeout: 60, interval: 0.3) do
              count(kind, "SELECT COUNT(*) FROM jetstream_inbox_events WHERE status = 'processed'") == 2
            end
            # The liveness probe: the consumer touches HEALTH_FILE (every 5 s) while it is healthy.
            eventually(timeout: 15, interval: 0.3) { File.exist?(health_file) }
            out, alive = rake("jetstream_bridge:alive", kind, args: ["HEALTH_FILE=#{health_file}", "MAX_AGE=10"])
            expect(alive.exitstatus).to eq(0), out
          ensure
            status = app.stop_process(pid)
          end
          out, alive = rake("jetstream_bridge:alive", kind, args: ["HEALTH_FILE=#{health_file}", "MAX_AGE=0.5"])
          expect(alive.exitstatus).to eq(1), out # not touched since it stopped
          log = app.read("log/consume_#{kind}.log")
          expect(status&.exitstatus).to eq(0), log
          expect(log).to include("consumer stopped")
          widgets = query(kind, "SELECT event_id, in_executor FROM widgets ORDER BY event_id").map { |id, ex| [id, [true, 1, "t"].include?(ex)] }
          expect(widgets).to eq([["flaky", true], ["twice", true]])
          inbox = query(kind, "SELECT event_id, status, deliveries, last_error FROM jetstream_inbox_events ORDER BY event_id")
                  .map { |id, st, d, e| [id, st, d.to_i, e] }
          expect(inbox).to eq([["flaky", "processed", 3, nil], ["twice", "processed", 1, nil]])
        end
      end
    end

    context "on PostgreSQL, PROCESSES=2 CONCURRENCY=4" do
      before { reset_tables(:postgres) }

      it "boots once, forks two workers that handle every event once, and stops them all on SIGTERM" do
        ensure_stream
        50.times { |i| publish_raw(CONSUME_SUBJECT, envelope("p-#{i}", n: i)) }
        pid = app.spawn_process(RbConfig.ruby, "bin/rake", "jetstream_bridge:consume", "HANDLER=WidgetHandler", "PROCESSES=2",
                                "CONCURRENCY=4", env: app_env(:postgres), log: "log/consume_processes.log")
        begin
          eventually(timeout: 60, interval: 0.3) { count(:postgres, "SELECT COUNT(*) FROM widgets") == 50 }
        ensure
          status = app.stop_process(pid)
        end
        log = app.read("log/consume_processes.log")
        expect(status&.exitstatus).to eq(0), log
        expect(log).to include("jetstream_bridge: 2 consumer processes")
        expect(log.scan(/worker \d \(pid \d+\): consumer stopped/).size).to eq(2)
        expect(log).to include("jetstream_bridge: all consumer processes stopped")
        expect(count(:postgres, "SELECT COUNT(DISTINCT event_id) FROM widgets")).to eq(50)
        expect(count(:postgres, "SELECT COUNT(*) FROM widgets WHERE in_executor")).to eq(50)
      end
    end

    context "on PostgreSQL, two relay processes at once" do
      before { reset_tables(:postgres) }

      it "send every row once between them" do
        nats.stop
        app_json(<<~RUBY, :postgres)
          ActiveRecord::Base.transaction do
            2_000.times { |i| JetstreamBridge.publish(event_type: "widget.created", payload: { id: i }, event_id: "pair-\#{i}") }
          end
          puts "JSON:" + JSON.generate(JetstreamBridge::OutboxEvent.count)
        RUBY
        nats.start
        runs = Array.new(2) do
          Thread.new { rake("jetstream_bridge:outbox:flush", :postgres, args: ["BATCH_SIZE=20"]) }
        end.map(&:value)
        runs.each { |out, status| expect(status.exitstatus).to eq(0), out }
        sent = runs.map { |out, _| out[/(\d+) sent \((\d+) duplicates\)/, 1].to_i }
        duplicates = runs.map { |out, _| out[/(\d+) sent \((\d+) duplicates\)/, 2].to_i }
        expect(sent.sum).to eq(2_000)
        expect(duplicates.sum).to eq(0)
        ids = stream_events.map { |e| e[1] }
        expect(ids.size).to eq(2_000)
        expect(ids.uniq.size).to eq(2_000)
      end
    end

    describe "rake tasks" do
      before { reset_tables(:sqlite) }

      it "jetstream_bridge:outbox:relay sends pending rows and stops on SIGTERM with exit status 0" do
        nats.stop
        app_json(<<~RUBY)
          3.times { |i| JetstreamBridge.publish(event_type: "widget.created", payload: { id: i }, event_id: "relay-\#{i}") }
          puts "JSON:" + JSON.generate(JetstreamBridge::OutboxEvent.pluck(:status))
        RUBY
        nats.start
        pid = app.spawn_process(RbConfig.ruby, "bin/rake", "jetstream_bridge:outbox:relay", "INTERVAL=0.2",
                                env: app_env(:sqlite), log: "log/relay.log")
        begin
          eventually(timeout: 60, interval: 0.3) do
            count(:sqlite, "SELECT COUNT(*) FROM jetstream_outbox_events WHERE status = 'sent'") == 3
          end
        ensure
          status = app.stop_process(pid)
        end
        log = app.read("log/relay.log")
        expect(status&.exitstatus).to eq(0), log
        expect(log).to include("outbox relay stopped, 3 sent")
        expect(stream_events.map { |e| e[1] }).to eq(%w[relay-0 relay-1 relay-2])
      end

      it "jetstream_bridge:health, test_connection, validate, debug and provision exit 0 with NATS up" do
        %w[jetstream_bridge:health jetstream_bridge:test_connection jetstream_bridge:validate jetstream_bridge:debug
           jetstream_bridge:provision].each do |task|
          out, status = rake(task)
          expect(status.exitstatus).to eq(0), "#{task}:\n#{out}"
        end
        out, = rake("jetstream_bridge:health")
        expect(JSON.parse(out[out.index("{")..])).to include("healthy" => true)
        out, = rake("jetstream_bridge:debug")
        expect(out).to include("\"app_name\": \"#{APP_NAME}\"")
      end

      it "jetstream_bridge:health and test_connection exit 1 with NATS down; validate exits 1 on a bad setting" do
        nats.stop
        out, status = rake("jetstream_bridge:health")
        expect(status.exitstatus).to eq(1), out
        expect(out).to include("\"healthy\": false")
        out, status = rake("jetstream_bridge:test_connection")
        expect(status.exitstatus).to eq(1), out
        expect(out).to include("Connection failed")
        out, status = rake("jetstream_bridge:validate", :sqlite, "APP_NAME" => "bad.name")
        expect(status.exitstatus).to eq(1), out
        expect(out).to include("app_name")
      end

      it "dlq:list, show, replay and discard a dead letter; prune tasks run; bad input exits 1, deleting nothing" do
        out, status = rake("jetstream_bridge:test_connection")
        expect(status).to be_success, out
        body = JSON.generate(event_id: "dead-1", schema_version: 1, event_type: "widget.created", payload: { id: 1 })
        NatsApi.publish_with_headers(nats.url, "development.sync.dlq", body,
                                     { "Nats-Msg-Id" => "dlq:#{STREAM}:1", "X-Dead-Letter-Reason" => "max_deliver",
                                       "X-Original-Subject" => CONSUME_SUBJECT, "X-Error-Class" => "RuntimeError",
                                       "X-Error-Message" => "boom", "X-Failed-At" => Time.now.utc.iso8601(3) })
        out, status = rake("jetstream_bridge:dlq:list")
        expect(status.exitstatus).to eq(0), out
        seq = out[/^(\d+)\s.*max_deliver\s+dead-1\s+#{Regexp.escape(CONSUME_SUBJECT)}\s+RuntimeError: boom$/, 1]
        expect(seq).not_to be_nil, out
        out, status = rake("jetstream_bridge:dlq:show", args: ["SEQ=#{seq}"])
        expect(status.exitstatus).to eq(0), out
        expect(JSON.parse(out[out.index("{")..])).to include("seq" => Integer(seq), "event_id" => "dead-1", "reason" => "max_deliver")

        { ["jetstream_bridge:dlq:replay", "SEQ=abc"] => /SEQ must be a dead letter's stream sequence/,
          ["jetstream_bridge:dlq:replay", "SEQ=999999"] => /no dead letter with seq 999999/,
          ["jetstream_bridge:dlq:discard", "OLDER_THAN=soon"] => /older_than must be a duration/,
          ["jetstream_bridge:outbox:prune", "OLDER_THAN=soon"] => /older_than must be a duration/,
          ["jetstream_bridge:inbox:prune", "OLDER_THAN=1m"] => /handled twice/,
          ["jetstream_bridge:outbox:prune"] => /give OLDER_THAN=/ }.each do |(task, *args), message|
          out, status = rake(task, args: args)
          expect(status.exitstatus).to eq(1), "#{task} #{args.join(' ')}:\n#{out}"
          expect(out).to match(message)
        end
        expect(stream_events.count { |subject, _, _| subject == "development.sync.dlq" }).to eq(1) # nothing deleted

        out, status = rake("jetstream_bridge:dlq:replay", args: ["SEQ=#{seq}"])
        expect(status.exitstatus).to eq(0), out
        expect(out).to include("1 dead letter(s) replayed")
        replayed = stream_events.select { |subject, _, _| subject == CONSUME_SUBJECT }
        expect(replayed.map { |_, id, headers| [id, headers[/X-Replayed-From: (\d+)/, 1]] }).to eq([["dead-1", seq]])
        out, = rake("jetstream_bridge:dlq:list")
        expect(out).to include("0 dead letter(s) shown")
        out, status = rake("jetstream_bridge:outbox:prune", args: ["OLDER_THAN=7d"])
        expect([status.exitstatus, out[/\d+ sent outbox row\(s\) older than 7d deleted/]]).to eq([0, "0 sent outbox row(s) older than 7d deleted"])
        out, status = rake("jetstream_bridge:inbox:prune", args: ["OLDER_THAN=30d"])
        expect(status.exitstatus).to eq(0), out
      end

      it "jetstream_bridge:consume without HANDLER, or with one that cannot take a delivery, explains and exits non-zero" do
        out, status = rake("jetstream_bridge:consume")
        expect(status).not_to be_success
        expect(out).to include("HANDLER=")

        # A middleware given as the handler: its call(event, context) cannot take a delivery.
        out, status = rake("jetstream_bridge:consume", args: ["HANDLER=JetstreamBridge::Inbox"])
        expect(status).not_to be_success
        expect(out).to include("HANDLER JetstreamBridge::Inbox: the handler's call(_event, context) cannot be called with (event), (event, subject, deliveries)")
      end
    end

    describe "Railtie" do
      it "connects to nothing while booting, and eager loads the gem's models in production" do
        env = app_env(:sqlite, "NATS_URLS" => "nats://127.0.0.1:#{RailsApp.free_port}", "RAILS_ENV" => "production",
                               "SECRET_KEY_BASE" => "x" * 64)
        out, status = app.runner(<<~RUBY, env: env)
          puts "JSON:" + JSON.generate(client: JetstreamBridge::Connection.current_client.nil?,
                                       outbox: !!defined?(JetstreamBridge::OutboxEvent), inbox: !!defined?(JetstreamBridge::InboxEvent),
                                       eager: Rails.application.config.eager_load)
        RUBY
        expect(status).to be_success, out
        expect(JSON.parse(out.lines.grep(/\AJSON:/).last.delete_prefix("JSON:")))
          .to eq("client" => true, "outbox" => true, "inbox" => true, "eager" => true)
      end
    end

    describe "GET /health/jetstream over HTTP" do
      it "answers 200 with NATS up and 503 with it down" do
        port = app.start_server(env: app_env(:sqlite))
        response = http_get(port, "/health/jetstream")
        expect(response.code).to eq("200"), response.body
        expect(JSON.parse(response.body)["healthy"]).to be(true)
        nats.stop
        response = eventually(timeout: 30, interval: 0.5) do
          r = http_get(port, "/health/jetstream")
          r if r.code == "503"
        end
        expect(JSON.parse(response.body)["healthy"]).to be(false)
      ensure
        app.stop_server
      end
    end

    # Helpers that publish as the other app would (core NATS, so copies are not deduplicated).
    def ensure_stream
      out, status = rake("jetstream_bridge:test_connection")
      expect(status).to be_success, out
    end

    def envelope(event_id, n:, fail_until: nil)
      payload = { "id" => n, "n" => n }
      payload["fail_until"] = fail_until if fail_until
      JSON.generate("event_id" => event_id, "schema_version" => 1, "event_type" => "created", "producer" => DEST,
                    "resource_type" => "widget", "resource_id" => n.to_s, "occurred_at" => Time.now.utc.iso8601,
                    "payload" => payload)
    end

    def publish_raw(subject, body, times: 1)
      conn = NatsApi::Conn.new(nats.url, 5)
      times.times { conn.publish(subject, body) }
      conn.ping
    ensure
      conn&.close
    end
  end
end
