# frozen_string_literal: true

require "fileutils"
require "json"
require "net/http"
require "securerandom"
require "pg"
require "capybara"
require "selenium-webdriver"
require_relative "../support/rails_app"
require_relative "../support/nats_server"

# The dashboard (issue 26) in a real browser: headless Chromium driven by Capybara and
# Selenium, against `mount JetstreamBridge::Web => "/jetstream"` in an app made by `rails
# new` (on PostgreSQL, with a session, so Rails' own CSRF token is the one checked), a
# real nats-server and the app's own consumer process (`rake jetstream_bridge:consume`).
# The overview and dead-letter screenshots in the README are taken here: into
# docs/images/ with JSB_SCREENSHOTS=1, else into a temporary dir (a test run leaves the
# checkout as it was).
module DashboardBrowserSpec
  APP_NAME = "jb_web_app"
  OTHER_APP = "other_app"
  STREAM = "development-jetstream-bridge-stream"
  IMAGES = ENV["JSB_SCREENSHOTS"] ? File.expand_path("../../docs/images", __dir__) : Dir.mktmpdir("jsb-screenshots").tap { |dir| at_exit { FileUtils.rm_rf(dir) } }

  # The handler: records each event it handles; raises ArgumentError (unrecoverable: the
  # event is dead-lettered at once) while tmp/fail_handler exists. With the inbox, a raise
  # rolls its row back.
  HANDLER = <<~RUBY
    class WebSpecHandler
      def call(event, _subject, _deliveries)
        HandledEvent.create!(event_id: event["event_id"])
        raise ArgumentError, "cannot handle \#{event['event_type']} \#{event['event_id']}" if File.exist?(Rails.root.join("tmp", "fail_handler"))
      end
    end
  RUBY

  MIGRATION = <<~RUBY
    class CreateHandledEvents < ActiveRecord::Migration[6.1]
      def change
        create_table(:handled_events) { |t| t.string :event_id; t.timestamps }
      end
    end
  RUBY

  # The README's mount, and the session an API-only app needs for Rails' CSRF token.
  ROUTES = <<~RUBY
    Rails.application.routes.draw do
      mount JetstreamBridge::Web => "/jetstream"
    end
  RUBY

  SESSION = <<~RUBY
    Rails.application.config.session_store :cookie_store, key: "_jb_web_app_session"
    Rails.application.config.middleware.use ActionDispatch::Cookies
    Rails.application.config.middleware.use ActionDispatch::Session::CookieStore, Rails.application.config.session_options
  RUBY

  RSpec.describe "JetstreamBridge::Web in a browser", :rails_app do
    before(:all) do
      @pg_db = "jb_web_#{Process.pid}_#{SecureRandom.hex(3)}"
      @app = RailsApp.new(name: APP_NAME).create!.generate!("jetstream_bridge:install")
      @app.write("app/models/handled_event.rb", "class HandledEvent < ApplicationRecord; end\n")
      @app.write("app/models/web_spec_handler.rb", HANDLER)
      @app.write("db/migrate/20000101000000_create_handled_events.rb", MIGRATION)
      @app.write("config/routes.rb", ROUTES)
      @app.write("config/initializers/session_store.rb", SESSION)
      @app.write("config/initializers/jetstream_web.rb",
                 "JetstreamBridge::Web.read_only = ENV[\"JB_WEB_READ_ONLY\"] == \"1\"\n")
      @app.rails!("db:create", "db:migrate", env: { "DATABASE_URL" => pg_url })
      @nats = NatsServer.new.start
      @consumer = @app.spawn_process(RbConfig.ruby, "bin/rake", "jetstream_bridge:consume", "HANDLER=WebSpecHandler",
                                     env: app_env, log: "log/consumer.log")
      @browser = Capybara::Session.new(DashboardBrowserSpec.driver)
    end

    after(:all) do
      @browser&.driver&.quit
      @app&.stop_process(@consumer) if @consumer
      @app&.cleanup
      @nats&.cleanup
      PG.connect(host: "127.0.0.1", dbname: "postgres") { |c| c.exec("DROP DATABASE IF EXISTS #{@pg_db} WITH (FORCE)") } if @pg_db
    end

    before do
      serve(read_only: false)
      FileUtils.rm_f(app.path("tmp/fail_handler"))
      # The spec process publishes as the other app, to this app's consumer.
      configure_bridge(server: @nats, env: "development", app_name: OTHER_APP, destination_app: APP_NAME, use_dlq: true)
    end

    attr_reader :app, :browser

    def pg_url = "postgres://127.0.0.1:5432/#{@pg_db}"

    def app_env(**extra)
      { "NATS_URLS" => @nats.url, "DATABASE_URL" => pg_url, "APP_NAME" => nil, "DESTINATION_APP" => nil }.merge(extra)
    end

    # The app's server, started (again) when not running in this mode.
    def serve(read_only:)
      return if @served_read_only == read_only && app.server_port

      app.stop_server
      port = app.start_server(env: app_env("JB_WEB_READ_ONLY" => read_only ? "1" : "0"))
      @served_read_only = read_only
      browser.reset_session!
      Capybara.app_host = "http://127.0.0.1:#{port}"
    end

    def visit(path) = browser.visit("http://127.0.0.1:#{app.server_port}/jetstream#{path}")

    def query(sql, *params)
      PG.connect(host: "127.0.0.1", dbname: @pg_db) { |c| c.exec_params(sql, params).values }
    end

    def handled_count(event_id) = query("SELECT count(*) FROM handled_events WHERE event_id = $1", event_id).first.first.to_i

    # Publishes an event that the app's handler fails; returns [event_id, its dead letter].
    def dead_letter(**event) = dead_letters([event]).first

    # Publishes events ({event_type:, payload:, headers:}) that the app's handler fails;
    # returns [[event_id, its dead letter], ...].
    def dead_letters(events)
      FileUtils.touch(app.path("tmp/fail_handler"))
      ids = events.map do |event|
        SecureRandom.uuid.tap do |event_id|
          JetstreamBridge.publish(event_type: event.fetch(:event_type, "order.placed"), event_id: event_id,
                                  payload: event.fetch(:payload) { { order_id: SecureRandom.hex(3) } }, headers: event[:headers])
        end
      end
      entries = eventually(timeout: 20) do
        found = JetstreamBridge::DeadLetters.each.select { |e| ids.include?(e.event_id) }
        found.size == ids.size && ids.map { |id| found.find { |e| e.event_id == id } }
      end
      FileUtils.rm_f(app.path("tmp/fail_handler"))
      ids.zip(entries)
    end

    # The app's durable: nothing pending, nothing waiting for its ack.
    def consumer_settled?
      info = JSON.parse(JetstreamBridge::Connection.client.stream_info(STREAM, true))
      info["consumers"].all? { |c| c["num_pending"].zero? && c["num_ack_pending"].zero? }
    end

    def alert_open?
      browser.driver.browser.switch_to.alert
      true
    rescue Selenium::WebDriver::Error::NoSuchAlertError
      false
    end

    def screenshot(name)
      FileUtils.mkdir_p(IMAGES)
      browser.save_screenshot(File.join(IMAGES, name))
    end

    it "shows the overview: connection, stream, the app's durable and its verdict, and a chart sampled on each view" do
      # Events at a steady pace between views, so that the chart has something to draw:
      # the overview samples the stream only when it is requested.
      4.times do |i|
        JetstreamBridge.publish_batch(Array.new(20 * (i + 1)) { |n| { event_type: "user.created", payload: { n: n } } })
        visit("/")
        sleep 0.6 # the scenario: views some time apart (Throughput keeps one sample per 0.5 s)
      end
      eventually(timeout: 20) { consumer_settled? }
      visit("/?refresh=off")
      expect(browser).to have_css(".verdict.ok", text: "healthy")
      expect(browser).to have_content("connected")
      expect(browser).to have_content(STREAM)
      durables = JSON.parse(JetstreamBridge::Connection.client.stream_info(STREAM, true))["consumers"].map { |c| c["name"] }
      expect(durables).not_to be_empty
      durables.each { |name| expect(browser).to have_css("table td code", text: name) }
      expect(browser).to have_css("svg.chart polyline")
      expect(browser).to have_link("Reload every 10 s")
      expect(browser).to have_no_css("meta[http-equiv=refresh]", visible: :all)
      screenshot("overview.png")
      visit("/")
      expect(browser).to have_css("meta[http-equiv=refresh][content='10']", visible: :all)
    end

    it "lists a dead letter; Replay (after its confirmation) hands it to the handler once and removes the entry" do
      (event_id, entry), = dead_letters([{ event_type: "invoice.paid", payload: { invoice: 7 } },
                                         { event_type: "user.updated", payload: { user: 3 } },
                                         { event_type: "order.shipped", payload: { order: 12 } }])
      visit("/inbox")
      expect(browser).to have_css("#inbox-rows", text: "ArgumentError")
      visit("/dead_letters")
      row = browser.find("#dead-letter-#{entry.seq}")
      expect(row).to have_content("invoice.paid")
      expect(row).to have_content("unrecoverable")
      expect(row).to have_content("ArgumentError")
      screenshot("dead_letters.png")

      row.click_link("Replay")
      expect(browser).to have_content("Publish dead letter #{entry.seq} again to development.#{OTHER_APP}.sync.#{APP_NAME}")
      browser.click_button("Replay")
      expect(browser).to have_css(".notice", text: "Replayed dead letter #{entry.seq}.")
      expect(browser).to have_no_css("#dead-letter-#{entry.seq}")
      eventually(timeout: 20) { handled_count(event_id) == 1 }
      eventually(timeout: 20) { consumer_settled? }
      expect(handled_count(event_id)).to eq(1)
      expect(JetstreamBridge::DeadLetters.find(entry.seq)).to be_nil
    end

    it "filters by reason, shows one entry's payload and headers, and Discard removes it" do
      _, entry = dead_letter(event_type: "user.deleted", headers: { "X-Tenant" => "acme" })
      visit("/dead_letters?reason=max_deliver")
      expect(browser).to have_no_css("#dead-letter-#{entry.seq}")
      browser.select("unrecoverable", from: "reason")
      browser.click_button("Filter")
      browser.find("#dead-letter-#{entry.seq}").click_link(entry.seq.to_s)
      expect(browser).to have_css("#payload", text: '"event_type": "user.deleted"')
      expect(browser).to have_css("#headers", text: "X-Tenant")
      expect(browser).to have_css("#headers", text: "X-Dead-Letter-Reason")
      browser.click_link("Discard")
      browser.click_button("Discard")
      expect(browser).to have_css(".notice", text: "Discarded dead letter #{entry.seq}.")
      expect(JetstreamBridge::DeadLetters.find(entry.seq)).to be_nil
    end

    it "Replay all for a reason replays every entry of it and says how many" do
      ids = Array.new(2) { dead_letter.first }
      visit("/dead_letters?reason=unrecoverable")
      browser.click_link("Replay all unrecoverable")
      expect(browser).to have_content("Publish every dead letter with reason unrecoverable again")
      browser.click_button("Replay")
      expect(browser).to have_css(".notice", text: /Replayed \d+ dead letters with reason unrecoverable\./)
      eventually(timeout: 20) { ids.all? { |id| handled_count(id) == 1 } }
      expect(JetstreamBridge::DeadLetters.each.select { |e| ids.include?(e.event_id) }).to be_empty
    end

    it "shows a payload and a header holding markup as text: no script runs" do
      _, entry = dead_letter(payload: { note: "<script>alert('payload')</script>" },
                             headers: { "X-Note" => "<img src=x onerror=alert('header')>" })
      visit("/dead_letters/#{entry.seq}")
      expect(browser).to have_css("#payload", text: "<script>alert('payload')</script>")
      expect(browser).to have_css("#headers", text: "<img src=x onerror=alert('header')>")
      expect(browser).to have_no_css("#payload script", visible: :all)
      expect(browser).to have_no_css("#headers img", visible: :all)
      expect(alert_open?).to be(false)
    end

    it "retries a dead outbox row, which the outbox page lists with its last error" do
      id = query(<<~SQL).first.first.to_i
        INSERT INTO jetstream_outbox_events (event_id, subject, payload, headers, status, attempts, last_error, created_at, updated_at)
        VALUES ('#{SecureRandom.uuid}', 'development.#{APP_NAME}.sync.#{OTHER_APP}', '{}', '{}', 'dead', 10,
                'JetstreamBridge::AuthorizationError: permissions violation for publish', now(), now()) RETURNING id
      SQL
      visit("/outbox")
      row = browser.find("#outbox-row-#{id}")
      expect(row).to have_content("permissions violation for publish")
      row.click_link("Retry")
      browser.click_button("Retry")
      expect(browser).to have_css(".notice", text: "1 dead row made failed again")
      expect(query("SELECT status, attempts FROM jetstream_outbox_events WHERE id = $1", id)).to eq([%w[failed 0]])
    end

    it "refuses a POST without the CSRF token (403) and changes nothing" do
      _, entry = dead_letter
      uri = URI("http://127.0.0.1:#{app.server_port}/jetstream/dead_letters/#{entry.seq}/discard")
      [{}, { "authenticity_token" => "forged" }].each do |form|
        response = Net::HTTP.post_form(uri, form)
        expect(response.code).to eq("403")
        expect(response.body).to include("CSRF token")
      end
      expect(JetstreamBridge::DeadLetters.find(entry.seq)).not_to be_nil
    end

    it "read-only mode shows no action and refuses the POSTs" do
      _, entry = dead_letter
      serve(read_only: true)
      visit("/dead_letters")
      expect(browser).to have_css("#dead-letter-#{entry.seq}")
      expect(browser).to have_css("header .tag", text: "read-only")
      %w[Replay Discard].each { |label| expect(browser).to have_no_link(label) }
      expect(browser).to have_no_button("Replay")
      expect(browser).to have_no_button("Discard")
      visit("/dead_letters/#{entry.seq}")
      expect(browser).to have_no_link("Replay")
      visit("/outbox")
      expect(browser).to have_no_link("Retry")
      response = Net::HTTP.post_form(URI("http://127.0.0.1:#{app.server_port}/jetstream/dead_letters/#{entry.seq}/discard"), {})
      expect(response.code).to eq("403")
      expect(JetstreamBridge::DeadLetters.find(entry.seq)).not_to be_nil
    end
  end

  # Headless Chromium (Debian's chromium and chromium-driver), one window size for the screenshots.
  def self.driver
    Capybara.register_driver(:jb_headless_chromium) do |app|
      options = Selenium::WebDriver::Chrome::Options.new(binary: "/usr/bin/chromium")
      %w[--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=1280,900].each { |a| options.add_argument(a) }
      service = Selenium::WebDriver::Service.chrome(path: "/usr/bin/chromedriver")
      Capybara::Selenium::Driver.new(app, browser: :chrome, options: options, service: service)
    end
    Capybara.run_server = false
    Capybara.default_max_wait_time = 10
    :jb_headless_chromium
  end
end
