# frozen_string_literal: true

require "json"
require "securerandom"
require_relative "../support/rails_app"
require_relative "../support/nats_server"

module JetstreamGeneratorsSpec
  MIGRATIONS = {
    "create_jetstream_outbox_events" => "CreateJetstreamOutboxEvents",
    "create_jetstream_inbox_events" => "CreateJetstreamInboxEvents"
  }.freeze
  INITIALIZER = "config/initializers/jetstream_bridge.rb"
  CONTROLLER = "app/controllers/jetstream_health_controller.rb"
  ROUTE = 'get "/health/jetstream", to: "jetstream_health#show"'
  OUTBOX_COLUMNS = %w[id event_id subject payload headers status attempts last_error enqueued_at sent_at
                      created_at updated_at].freeze
  INBOX_COLUMNS = %w[id event_id subject payload headers stream stream_seq deliveries status last_error
                     received_at processed_at created_at updated_at].freeze

  # Columns, column types and indexes of both tables, as the app's connection sees them.
  SCHEMA_QUERY = <<~RUBY
    require "json"
    c = ActiveRecord::Base.connection
    tables = %w[jetstream_outbox_events jetstream_inbox_events]
    columns = tables.select { |t| c.table_exists?(t) }.to_h do |t|
      [t, c.columns(t).to_h { |col| [col.name, { "sql_type" => col.sql_type, "null" => col.null, "default" => col.default }] }]
    end
    indexes =
      if c.adapter_name =~ /postg/i
        c.select_rows("SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'jetstream%'")
      else
        c.select_rows("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name LIKE 'jetstream%' AND sql IS NOT NULL")
      end
    puts "JSON:" + JSON.generate(adapter: c.adapter_name, columns: columns, indexes: indexes.to_h)
  RUBY

  # The generators, run by `bin/rails g` in a real app made by `rails new` that uses this
  # repository's gem by path; the migrations are run on SQLite and on PostgreSQL.
  RSpec.describe "Rails generators (jetstream_bridge:*)", :rails_app do
    # The generators are run once here; examples only read what they left (and use their own
    # databases), so they do not depend on each other's order.
    before(:all) do
      @app = RailsApp.new.create!
      @install_out = @app.rails!("g", "jetstream_bridge:install")
      @health_out = @app.rails!("g", "jetstream_bridge:health_check")
      @after_first = tree_snapshot
      @rerun_out = [
        @app.rails!("g", "jetstream_bridge:install"),
        @app.rails!("g", "jetstream_bridge:health_check"),
        @app.rails!("g", "jetstream_bridge:initializer"),
        @app.rails!("g", "jetstream_bridge:migrations")
      ].join
      @after_rerun = tree_snapshot
      # README step 3. The development database is migrated once, here: development answers
      # every request with PendingMigrationError otherwise. The db:migrate examples below use
      # databases of their own.
      @app.rails!("db:migrate")
    end

    after(:all) { @app&.cleanup }

    attr_reader :app

    def tree_snapshot
      files = @app.glob("db/migrate/*.rb") + [INITIALIZER, CONTROLLER, "config/routes.rb"]
      files.to_h { |f| [f, File.exist?(@app.path(f)) ? @app.read(f) : nil] }
    end

    def migration_files
      @after_first.keys.grep(%r{\Adb/migrate/})
    end

    def migration_file(name)
      files = migration_files.grep(/\A.*\/\d+_#{name}\.rb\z/)
      expect(files.size).to eq(1), "expected one #{name} migration, found #{files.inspect}"
      files.first
    end

    def version_of(file)
      File.basename(file)[/\A(\d+)_/, 1]
    end

    # Runs Ruby inside the booted app; the code prints one line "JSON:<json>", returned parsed.
    def app_json(code, env: {}, timeout: RailsApp::DEFAULT_TIMEOUT)
      out, status = app.runner(code, env: env, timeout: timeout)
      expect(status).to be_success, "bin/rails runner failed:\n#{out}"
      line = out.lines.reverse.find { |l| l.start_with?("JSON:") }
      expect(line).not_to be_nil, "no JSON line in runner output:\n#{out}"
      JSON.parse(line.delete_prefix("JSON:"))
    end

    describe "jetstream_bridge:install and jetstream_bridge:health_check" do
      it "create the files the README lists" do
        expect(migration_files.map { |f| f.sub(/\A(db\/migrate\/)\d+_/, '\1*_') })
          .to contain_exactly("db/migrate/*_create_jetstream_outbox_events.rb",
                              "db/migrate/*_create_jetstream_inbox_events.rb")
        expect(@after_first[INITIALIZER]).not_to be_nil
        expect(@after_first[CONTROLLER]).not_to be_nil
        expect(@install_out).to include("create  #{INITIALIZER}")
        expect(@health_out).to include("create  #{CONTROLLER}")
      end

      it "give the two migrations distinct versions, outbox first" do
        outbox = version_of(migration_file("create_jetstream_outbox_events"))
        inbox = version_of(migration_file("create_jetstream_inbox_events"))
        expect(outbox).to match(/\A\d{14}\z/)
        expect(inbox.to_i).to be > outbox.to_i
      end

      it "write migrations for the app's Active Record version" do
        ar_version = app.read("Gemfile.lock")[/^    activerecord \((\d+\.\d+)/, 1]
        expect(ar_version).not_to be_nil
        MIGRATIONS.each do |name, class_name|
          source = @after_first[migration_file(name)]
          expect(source).to include("class #{class_name} < ActiveRecord::Migration[#{ar_version}]")
        end
      end

      it "are idempotent: a second run creates nothing, duplicates nothing, changes nothing" do
        expect(@after_rerun).to eq(@after_first)
        expect(@after_rerun["config/routes.rb"].scan(ROUTE).size).to eq(1)
        expect(@rerun_out).not_to match(/^\s*create\s/)
        expect(@rerun_out).to match(/skip\s+db\/migrate\/\d+_create_jetstream_outbox_events\.rb already exists/)
        expect(@rerun_out).to match(/skip\s+db\/migrate\/\d+_create_jetstream_inbox_events\.rb already exists/)
        expect(@rerun_out).to match(/skip\s+config\/routes\.rb already routes to jetstream_health#show/)
      end

      it "leave files the user edited alone, without an overwrite prompt" do
        edited = [INITIALIZER, CONTROLLER].to_h { |f| [f, "#{@after_first[f]}# edited by the user\n"] }
        edited.each { |f, text| File.write(app.path(f), text) }
        out = app.rails!("g", "jetstream_bridge:initializer") + app.rails!("g", "jetstream_bridge:health_check")
        edited.each { |f, text| expect(app.read(f)).to eq(text) }
        expect(out).to match(/skip\s+#{Regexp.escape(INITIALIZER)}/)
        expect(out).to match(/skip\s+#{Regexp.escape(CONTROLLER)}/)
      ensure
        [INITIALIZER, CONTROLLER].each { |f| File.write(app.path(f), @after_first[f]) }
      end

      it "add the health route once" do
        expect(@after_first["config/routes.rb"].scan(ROUTE).size).to eq(1)
      end
    end

    describe "migration numbering" do
      # Time frozen inside the generator's process: the original gem gave both migrations the
      # same version when generated in the same second.
      it "gives distinct versions to migrations generated in the same second" do
        result = app_json(<<~RUBY)
          require "rails/generators"
          Rails.application.load_generators
          require "json"
          frozen = Time.utc(2030, 1, 2, 3, 4, 5)
          Time.singleton_class.prepend(Module.new { define_method(:now) { frozen } })
          dest = Rails.root.join("tmp", "frozen_clock_#{SecureRandom.hex(4)}").to_s
          Rails::Generators.invoke("jetstream_bridge:migrations", ["--quiet"], behavior: :invoke, destination_root: dest)
          puts "JSON:" + JSON.generate(Dir.children(File.join(dest, "db/migrate")).sort)
        RUBY
        expect(result).to eq(%w[20300102030405_create_jetstream_outbox_events.rb
                                20300102030406_create_jetstream_inbox_events.rb])
      end

      it "numbers past the highest existing version" do
        result = app_json(<<~RUBY)
          require "rails/generators"
          Rails.application.load_generators
          require "json"
          require "fileutils"
          dest = Rails.root.join("tmp", "future_#{SecureRandom.hex(4)}").to_s
          FileUtils.mkdir_p(File.join(dest, "db/migrate"))
          File.write(File.join(dest, "db/migrate/29991231235959_create_widgets.rb"), "")
          Rails::Generators.invoke("jetstream_bridge:migrations", ["--quiet"], behavior: :invoke, destination_root: dest)
          puts "JSON:" + JSON.generate(Dir.children(File.join(dest, "db/migrate")).sort)
        RUBY
        expect(result).to eq(%w[29991231235959_create_widgets.rb
                                29991231235960_create_jetstream_outbox_events.rb
                                29991231235961_create_jetstream_inbox_events.rb])
      end
    end

    describe "rails destroy" do
      it "removes what install and health_check created, route included" do
        result = app_json(<<~RUBY)
          require "rails/generators"
          Rails.application.load_generators
          require "json"
          require "fileutils"
          dest = Rails.root.join("tmp", "destroy_#{SecureRandom.hex(4)}").to_s
          FileUtils.mkdir_p(File.join(dest, "config"))
          FileUtils.cp(Rails.root.join("config/routes.rb").to_s, File.join(dest, "config/routes.rb"))
          File.write(File.join(dest, "config/routes.rb"), File.read(File.join(dest, "config/routes.rb")).sub(/^.*jetstream_health#show.*\\n/, ""))
          list = -> { Dir.glob("**/*", base: dest).select { |f| File.file?(File.join(dest, f)) }.sort }
          %w[jetstream_bridge:install jetstream_bridge:health_check].each do |g|
            Rails::Generators.invoke(g, ["--quiet"], behavior: :invoke, destination_root: dest)
          end
          created = list.call
          routes_created = File.read(File.join(dest, "config/routes.rb"))
          %w[jetstream_bridge:install jetstream_bridge:health_check].each do |g|
            Rails::Generators.invoke(g, ["--quiet"], behavior: :revoke, destination_root: dest)
          end
          puts "JSON:" + JSON.generate(created: created, routes_created: routes_created,
                                       left: list.call, routes_left: File.read(File.join(dest, "config/routes.rb")))
        RUBY
        expect(result["created"].size).to eq(5)
        expect(result["routes_created"]).to include(ROUTE)
        expect(result["left"]).to eq(["config/routes.rb"])
        expect(result["routes_left"]).not_to include("jetstream_health")
      end
    end

    describe "the initializer" do
      let(:source) { @after_first[INITIALIZER] }

      it "sets every documented setting, each with a comment" do
        settings = %w[nats_urls env app_name destination_app use_outbox use_inbox use_dlq
                      max_deliver ack_wait backoff]
        lines = source.lines
        settings.each do |setting|
          index = lines.index { |l| l =~ /^\s*config\.#{setting} = / }
          expect(index).not_to be_nil, "config.#{setting} is not set"
          expect(lines[index - 1]).to match(/^\s*#\s*\S/), "config.#{setting} has no comment above it"
        end
        %w[subject_layout outbox_model inbox_model logger on_error].each do |setting|
          expect(source).to match(/^\s*# config\.#{setting} = /)
        end
        expect(source).to match(/^\s*# config\.consumer_middleware\.use\(/)
      end

      it "points at test mode in comments" do
        expect(source).to include('#   require "jetstream_bridge/testing/rspec"')
        expect(source).to include('#   require "jetstream_bridge/testing/minitest"')
        expect(source).to include("# JetstreamBridge::Testing.fake!")
      end

      it "reads the environment with defaults that let a fresh app boot" do
        expect(source).to include('config.nats_urls = ENV.fetch("NATS_URLS", "nats://localhost:4222")')
        expect(source).to include('config.env = ENV.fetch("RAILS_ENV", "development")')
        expect(source).to include('config.app_name = ENV.fetch("APP_NAME", "jb_rails_app")')
        expect(source).to include('config.destination_app = ENV.fetch("DESTINATION_APP", "other_app")')
        expect(source).to include('config.ack_wait = "30s"')
      end

      it "writes the documented max_deliver and backoff schedule" do
        max_deliver = source[/^\s*config\.max_deliver = (\d+)/, 1].to_i
        backoff = source[/^\s*config\.backoff = %w\[([^\]]*)\]/, 1].split
        expect(max_deliver).to eq(5)
        expect(backoff).to eq(%w[1s 5s 15s 30s])
      end

      it "boots the app with the gem and applies the settings (no NATS server needed)" do
        env = { "NATS_URLS" => "nats://127.0.0.1:#{RailsApp.free_port}", "APP_NAME" => nil, "DESTINATION_APP" => nil }
        result = app_json(<<~RUBY, env: env)
          require "json"
          c = JetstreamBridge.config
          puts "JSON:" + JSON.generate(
            app_name: c.app_name, destination_app: c.destination_app, env: c.env,
            use_outbox: c.use_outbox, use_inbox: c.use_inbox, use_dlq: c.use_dlq,
            max_deliver: c.max_deliver, ack_wait: c.ack_wait, backoff: c.backoff
          )
        RUBY
        expect(result).to eq("app_name" => "jb_rails_app", "destination_app" => "other_app", "env" => "development",
                             "use_outbox" => true, "use_inbox" => true, "use_dlq" => true,
                             "max_deliver" => 5, "ack_wait" => "30s", "backoff" => %w[1s 5s 15s 30s])
      end
    end

    def expect_readme_schema(schema, json_type)
      outbox = schema.fetch("columns").fetch("jetstream_outbox_events")
      inbox = schema.fetch("columns").fetch("jetstream_inbox_events")
      expect(outbox.keys).to eq(OUTBOX_COLUMNS)
      expect(inbox.keys).to eq(INBOX_COLUMNS)
      [outbox, inbox].each do |cols|
        %w[payload headers].each do |name|
          expect(cols[name]["sql_type"]).to eq(json_type)
          expect(cols[name]["null"]).to be(false)
          expect(cols[name]["default"]).to match(/\A'?\{\}/)
        end
        expect(cols["subject"]["null"]).to be(false)
      end
      expect(outbox["event_id"]["null"]).to be(false)
      expect(inbox["event_id"]["null"]).to be(true)
      expect(outbox["status"]["default"]).to eq("pending")
      expect(outbox["attempts"]["default"]).to eq("0")
      expect(inbox["status"]["default"]).to eq("processed")
      expect(inbox["stream_seq"]["sql_type"]).to match(/bigint/i)
    end

    def expect_readme_indexes(indexes)
      # Comments out: a Rails 8 app tags its SQL (/*application='JbRailsApp'*/), and SQLite keeps the tag.
      defs = indexes.transform_values { |sql| sql.gsub(%r{/\*.*?\*/}, "").gsub(/["()]/, "").squeeze(" ").strip }
      expect(defs.fetch("index_jetstream_outbox_events_on_event_id")).to match(/UNIQUE INDEX.*event_id\z/)
      expect(defs.fetch("index_jetstream_outbox_events_on_status")).not_to include("UNIQUE")
      expect(defs.fetch("index_jetstream_inbox_events_on_event_id"))
        .to match(/UNIQUE INDEX.*\bevent_id WHERE event_id IS NOT NULL\z/)
      expect(defs.fetch("index_jetstream_inbox_events_on_stream_and_stream_seq"))
        .to match(/UNIQUE INDEX.*\bstream, stream_seq WHERE stream IS NOT NULL AND stream_seq IS NOT NULL\z/)
      expect(defs.fetch("index_jetstream_inbox_events_on_status")).not_to include("UNIQUE")
    end

    describe "bin/rails db:migrate" do
      it "creates the README's tables on SQLite (json columns, partial unique indexes) and rolls back" do
        env = { "DATABASE_URL" => "sqlite3:db/generators_#{SecureRandom.hex(4)}.sqlite3" }
        app.rails!("db:migrate", env: env)
        schema = app_json(SCHEMA_QUERY, env: env)
        expect(schema["adapter"]).to eq("SQLite")
        expect_readme_schema(schema, "json")
        expect_readme_indexes(schema["indexes"])

        app.rails!("db:rollback", "STEP=2", env: env)
        expect(app_json(SCHEMA_QUERY, env: env)["columns"]).to eq({})
        app.rails!("db:migrate", env: env)
        expect(app_json(SCHEMA_QUERY, env: env)["columns"].keys)
          .to contain_exactly("jetstream_outbox_events", "jetstream_inbox_events")
      end

      it "creates the README's tables on PostgreSQL (json columns: bytes kept; partial unique indexes) and rolls back" do
        db = "jb_generators_#{Process.pid}_#{SecureRandom.hex(3)}"
        env = { "DATABASE_URL" => "postgres://127.0.0.1:5432/#{db}" }
        begin
          app.rails!("db:create", env: env)
          app.rails!("db:migrate", env: env)
          schema = app_json(SCHEMA_QUERY, env: env)
          expect(schema["adapter"]).to eq("PostgreSQL")
          expect_readme_schema(schema, "json")
          expect_readme_indexes(schema["indexes"])

          app.rails!("db:rollback", "STEP=2", env: env)
          expect(app_json(SCHEMA_QUERY, env: env)["columns"]).to eq({})
        ensure
          _out, status = app.rails("db:drop", env: env.merge("DISABLE_DATABASE_ENVIRONMENT_CHECK" => "1"))
          system("dropdb", "-h", "127.0.0.1", "--if-exists", db, %i[out err] => File::NULL) unless status&.success?
        end
      end
    end

    describe "GET /health/jetstream" do
      # Calls the app through Rack in a runner: the real route, controller and middleware.
      def get_health(stub: nil, env: {}, before: "")
        stub_code =
          case stub
          when :healthy then "JetstreamBridge.define_singleton_method(:health_check) { { healthy: true, nats_connected: true } }"
          when :unhealthy then "JetstreamBridge.define_singleton_method(:health_check) { { healthy: false, nats_connected: false } }"
          when :raise then "JetstreamBridge.define_singleton_method(:health_check) { raise IOError, 'nats://user:s3cret@db' }"
          else ""
          end
        result = app_json(<<~RUBY, env: env)
          require "json"
          #{stub_code}
          #{before}
          env = Rack::MockRequest.env_for("/health/jetstream", "HTTP_HOST" => "localhost")
          status, headers, body = Rails.application.call(env)
          text = +""
          body.each { |chunk| text << chunk }
          body.close if body.respond_to?(:close)
          puts "JSON:" + JSON.generate(status: status, content_type: headers["Content-Type"], body: text)
        RUBY
        [result["status"], JSON.parse(result["body"]), result["content_type"]]
      end

      it "inherits from ActionController::API" do
        expect(@after_first[CONTROLLER]).to include("class JetstreamHealthController < ActionController::API")
      end

      it "answers 200 with status and healthy only (JSON) when healthy" do
        status, body, type = get_health(stub: :healthy)
        expect(status).to eq(200)
        expect(type).to start_with("application/json")
        expect(body).to eq("status" => "ok", "healthy" => true)
      end

      it "answers 503 when not healthy" do
        status, body, = get_health(stub: :unhealthy)
        expect(status).to eq(503)
        expect(body).to eq("status" => "unavailable", "healthy" => false)
      end

      it "answers the health hash whole with config.health_details" do
        status, body, = get_health(stub: :healthy, before: "JetstreamBridge.config.health_details = true")
        expect(status).to eq(200)
        expect(body).to eq("healthy" => true, "nats_connected" => true)
      end

      it "answers 503 when the health check raises, with the error class only with config.health_details" do
        status, body, = get_health(stub: :raise)
        expect(status).to eq(503)
        expect(body).to eq("status" => "unavailable", "healthy" => false)
        status, body, = get_health(stub: :raise, before: "JetstreamBridge.config.health_details = true")
        expect(status).to eq(503)
        expect(body).to eq("status" => "unavailable", "healthy" => false, "error" => "IOError")
      end

      it "answers 503 JSON with the real gem when NATS is unreachable" do
        status, body, = get_health(env: { "NATS_URLS" => "nats://127.0.0.1:#{RailsApp.free_port}" })
        expect(status).to eq(503)
        expect(body["healthy"]).to be(false)
      end

      it "answers 200 with the real gem against a real NATS server" do
        NatsServer.with_server do |server|
          status, body, = get_health(env: { "NATS_URLS" => server.url },
                                     before: "JetstreamBridge.ensure_topology!")
          expect(status).to eq(200), "health: #{body.inspect}"
          expect(body["healthy"]).to be(true)
        end
      end
    end
  end
end
