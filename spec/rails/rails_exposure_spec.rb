# frozen_string_literal: true

require "json"
require "net/http"
require_relative "../support/rails_app"
require_relative "../support/nats_server"
require_relative "../support/nats_api"

# What a generated Rails app shows of the bridge, in a real app made by `rails new` (issue
# 22): the documented models by name in `bin/rails runner` (item 13), the health endpoint
# over real HTTP, which by default tells anyone only whether it is healthy (item 12), and
# the dlq rake tasks' answer to a sequence no stream can hold (item 11).
module RailsExposureSpec
  APP_NAME = "jb_exposure_app"
  STREAM = "development-jetstream-bridge-stream"

  # The README's way to show the details only to the app's own authenticated users.
  AUTHENTICATED_CONTROLLER = <<~RUBY
    class JetstreamHealthController < ApplicationController
      before_action :authenticate_admin!

      def show
        health = JetstreamBridge.health_check
        render json: health, status: health[:healthy] == true ? :ok : :service_unavailable
      end

      private

      def authenticate_admin!
        head :unauthorized unless request.headers["X-Admin-Token"] == "letmein"
      end
    end
  RUBY

  RSpec.describe "A generated Rails app's view of the bridge", :rails_app do
    before(:all) do
      @app = RailsApp.new(name: APP_NAME).create!.generate!("jetstream_bridge:install", "jetstream_bridge:health_check")
      @app.write("config/initializers/jetstream_bridge_spec.rb",
                 "JetstreamBridge.config.health_details = true if ENV[\"JB_HEALTH_DETAILS\"] == \"1\"\n")
      @app.rails!("db:migrate")
    end

    after(:all) { @app&.cleanup }

    around do |example|
      @nats = NatsServer.new.start
      example.run
    ensure
      @app&.stop_server
      @nats&.cleanup
    end

    attr_reader :app, :nats

    def app_env(**extra)
      { "NATS_URLS" => nats.url, "APP_NAME" => nil, "DESTINATION_APP" => nil }.merge(extra.transform_keys(&:to_s))
    end

    def http_get(port, path, headers = {})
      Net::HTTP.start("127.0.0.1", port, open_timeout: 5, read_timeout: 30) { |h| h.get(path, headers) }
    end

    describe "JetstreamBridge::OutboxEvent and InboxEvent (item 13)" do
      it "resolve by name in `bin/rails runner` of an app that does not eager load, with their scopes" do
        out, status = app.runner(<<~RUBY, env: app_env)
          require "json"
          at_boot = $LOADED_FEATURES.any? { |f| f.end_with?("jetstream_bridge/models.rb") }
          JetstreamBridge::OutboxEvent.create!(event_id: "e1", subject: "s", payload: "{}", status: "pending")
          JetstreamBridge::InboxEvent.create!(event_id: "e2", subject: "s", payload: "{}", status: "failed")
          result = { eager: Rails.application.config.eager_load, models_loaded_at_boot: at_boot,
                     unsent: JetstreamBridge::OutboxEvent.unsent.count, pending: JetstreamBridge::OutboxEvent.pending.count,
                     dead: JetstreamBridge::OutboxEvent.dead.count, failed: JetstreamBridge::InboxEvent.failed.count,
                     processed: JetstreamBridge::InboxEvent.processed.count,
                     base: JetstreamBridge::OutboxEvent.superclass.name }
          JetstreamBridge::OutboxEvent.delete_all
          JetstreamBridge::InboxEvent.delete_all
          puts "JSON:" + JSON.generate(result)
        RUBY
        puts out unless status.success?
        line = out.lines.grep(/\AJSON:/).last
        expect(line).not_to be_nil, out
        expect(JSON.parse(line.delete_prefix("JSON:")))
          .to eq("eager" => false, "models_loaded_at_boot" => false, "unsent" => 1, "pending" => 1, "dead" => 0,
                 "failed" => 1, "processed" => 0, "base" => "ActiveRecord::Base")
        expect(status).to be_success, out
      end
    end

    describe "a failing handler" do
      it "reaches Rails.error once, as handled (Rails 7+: the executor reports what escapes it as unhandled)" do
        out, status = app.runner(<<~RUBY, env: app_env(APP_NAME: "same", DESTINATION_APP: "same"))
          require "json"
          unless Rails.respond_to?(:error) # Rails 6.1 has no error reporter
            puts "JSON:null"
            exit
          end
          reports = Queue.new
          Rails.error.subscribe(Class.new { define_method(:report) { |e, handled:, **| reports << [e.message, handled] } }.new)
          JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })
          # Without the inbox: its batch (one executor wrap) keeps a handler's error inside; here it leaves the message's wrap.
          JetstreamBridge.config.use_inbox = false
          consumer = JetstreamBridge.subscribe { |_event| raise "handler failed" }
          runner = Thread.new { consumer.run! }
          first = reports.pop # the first delivery's reports are all made before the consumer moves on
          consumer.stop!
          runner.join
          seen = [first]
          seen << reports.pop until reports.empty?
          puts "JSON:" + JSON.generate(seen.uniq)
        RUBY
        line = out.lines.grep(/\AJSON:/).last
        expect(line).not_to be_nil, out
        skip "Rails 6.1 has no Rails.error" if line.strip == "JSON:null"
        expect(JSON.parse(line.delete_prefix("JSON:"))).to eq([["handler failed", true]])
        expect(status).to be_success, out
      end
    end

    describe "GET /health/jetstream over HTTP (item 12)" do
      it "answers status and healthy only by default: no host, name, subject, count or version" do
        port = app.start_server(env: app_env)
        response = http_get(port, "/health/jetstream")
        expect(response.code).to eq("200"), response.body
        expect(JSON.parse(response.body)).to eq("status" => "ok", "healthy" => true)
        %w[127.0.0.1 development jb_exposure_app jetstream-bridge-stream sync version].each do |secret|
          expect(response.body).not_to include(secret)
        end
        nats.stop
        response = eventually(timeout: 30, interval: 0.5) do
          r = http_get(port, "/health/jetstream")
          r if r.code == "503"
        end
        expect(JSON.parse(response.body)).to eq("status" => "unavailable", "healthy" => false)
      end

      it "shows health_check whole with config.health_details, and behind the app's own authentication" do
        port = app.start_server(env: app_env(JB_HEALTH_DETAILS: "1"))
        body = JSON.parse(http_get(port, "/health/jetstream").body)
        expect(body).to include("healthy" => true, "nats_connected" => true, "version" => a_string_matching(/\A\d+\.\d+/))
        expect(body.dig("stream", "name")).to eq(STREAM)
        expect(body.dig("config", "nats_urls")).to eq(nats.url)
        app.stop_server

        original = app.read("app/controllers/jetstream_health_controller.rb")
        begin
          app.write("app/controllers/jetstream_health_controller.rb", AUTHENTICATED_CONTROLLER)
          port = app.start_server(env: app_env)
          denied = http_get(port, "/health/jetstream")
          expect(denied.code).to eq("401")
          expect(denied.body).not_to include("127.0.0.1")
          allowed = http_get(port, "/health/jetstream", "X-Admin-Token" => "letmein")
          expect(allowed.code).to eq("200"), allowed.body
          expect(JSON.parse(allowed.body).dig("stream", "name")).to eq(STREAM)
        ensure
          app.write("app/controllers/jetstream_health_controller.rb", original)
        end
      end
    end

    describe "dlq rake tasks with a sequence no stream holds (item 11)" do
      it "exit 1 naming the bad value, without a backtrace, touching nothing" do
        ensure_stream = app.run(RbConfig.ruby, "bin/rake", "jetstream_bridge:test_connection", env: app_env)
        expect(ensure_stream.last).to be_success, ensure_stream.first
        { ["jetstream_bridge:dlq:replay", "SEQ=18446744073709551616"] => /seq must be a positive Integer.*got 18446744073709551616/,
          ["jetstream_bridge:dlq:discard", "SEQ=99999999999999999999999"] => /seq must be a positive Integer.*got 99999999999999999999999/,
          ["jetstream_bridge:dlq:show", "SEQ=18446744073709551616"] => /seq must be a positive Integer.*got 18446744073709551616/,
          ["jetstream_bridge:dlq:list", "AFTER=-5"] => /after must be 0 or a stream sequence.*got -5/,
          ["jetstream_bridge:dlq:list", "AFTER=18446744073709551616"] => /after must be .*got 18446744073709551616/ }
          .each do |(task, *args), message|
          out, status = app.run(RbConfig.ruby, "bin/rake", task, *args, env: app_env)
          expect(status.exitstatus).to eq(1), "#{task} #{args.join(' ')}:\n#{out}"
          expect(out).to match(message), "#{task} #{args.join(' ')}:\n#{out}"
          expect(out).not_to match(/rake aborted|RangeError|\.rb:\d+:in /), "#{task} #{args.join(' ')}:\n#{out}"
        end
      end
    end
  end
end
