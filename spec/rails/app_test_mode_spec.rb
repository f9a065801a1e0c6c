# frozen_string_literal: true

require "json"
require_relative "../support/rails_app"

# Test mode as an app's own test suite uses it (README "Testing your app"), end to end in a
# real app made by `rails new`: a User model publishing user.created from after_create_commit,
# specs under rspec-rails and tests under Rails' Minitest, transactional tests on (the default
# of both) and the generated initializer's use_outbox = true, with NATS_URLS on a port where
# nothing listens. The app is built once for the file.
module AppTestModeSpec
  APP_NAME = "jb_test_mode_app"
  SUBJECT = "test.#{APP_NAME}.sync.other_app"

  # The app's code, and the specs and tests that must pass.
  APP_FILES = {
    "db/migrate/20000101000000_create_users.rb" => <<~RUBY,
      class CreateUsers < ActiveRecord::Migration[6.1]
        def change
          create_table :users do |t|
            t.string :name
            t.string :email
            t.timestamps
          end
        end
      end
    RUBY

    "app/models/user.rb" => <<~RUBY,
      class User < ApplicationRecord
        after_create_commit :publish_created

        private

        def publish_created
          JetstreamBridge.publish(event_type: "user.created", payload: { id: id, email: email })
        end
      end
    RUBY

    "app/controllers/users_controller.rb" => <<~RUBY,
      class UsersController < ApplicationController
        def create
          user = User.create!(params.require(:user).permit(:name, :email))
          render json: { id: user.id }, status: :created
        end
      end
    RUBY

    "config/routes.rb" => <<~RUBY,
      Rails.application.routes.draw do
        resources :users, only: :create
      end
    RUBY

    "spec/models/user_spec.rb" => <<~RUBY,
      require "rails_helper"

      RSpec.describe User, :jetstream do
        it "publishes user.created once it is created" do
          expect { User.create!(name: "Ann", email: "ann@example.com") }
            .to have_published_event("user.created").with_payload(hash_including(email: "ann@example.com")).once
        end

        it "publishes nothing when the transaction creating it rolls back" do
          expect do
            User.transaction do
              User.create!(name: "Bob", email: "bob@example.com")
              raise ActiveRecord::Rollback
            end
          end.not_to have_published_event("user.created")
        end

        it "records nothing published in a transaction that rolls back" do
          expect do
            ActiveRecord::Base.transaction do
              JetstreamBridge.publish(event_type: "user.created", payload: { id: 0 })
              raise ActiveRecord::Rollback
            end
          end.not_to have_published_event("user.created")
        end
      end
    RUBY

    "spec/requests/users_spec.rb" => <<~RUBY,
      require "rails_helper"

      RSpec.describe "POST /users", :jetstream, type: :request do # rspec-rails 6+ infers no type from the path
        it "publishes user.created on the app's subject, once" do
          expect { post "/users", params: { user: { name: "Cy", email: "cy@example.com" } } }
            .to have_published_event("user.created").with_subject("#{SUBJECT}")
            .with_payload(hash_including(email: "cy@example.com")).once
          expect(response).to have_http_status(:created)
        end

        # No expect block here: the :jetstream tag alone runs it in fake mode with empty records.
        it "records the new user's id" do
          post "/users", params: { user: { name: "Dee", email: "dee@example.com" } }
          expect(JetstreamBridge::Testing.published.map(&:payload))
            .to eq([{ "id" => response.parsed_body["id"], "email" => "dee@example.com" }])
        end
      end
    RUBY

    "test/models/user_test.rb" => <<~RUBY,
      require "test_helper"

      class UserTest < ActiveSupport::TestCase
        test "publishes user.created once it is created" do
          assert_event_published("user.created", payload: { id: 4242, email: "ann@example.com" }, count: 1) do
            User.create!(id: 4242, name: "Ann", email: "ann@example.com")
          end
        end

        test "publishes nothing when the transaction creating it rolls back" do
          assert_no_events_published do
            User.transaction do
              User.create!(name: "Bob", email: "bob@example.com")
              raise ActiveRecord::Rollback
            end
          end
        end

        test "records nothing published in a transaction that rolls back" do
          assert_no_events_published do
            ActiveRecord::Base.transaction do
              JetstreamBridge.publish(event_type: "user.created", payload: { id: 0 })
              raise ActiveRecord::Rollback
            end
          end
        end
      end
    RUBY

    "test/integration/users_test.rb" => <<~RUBY
      require "test_helper"

      class UsersTest < ActionDispatch::IntegrationTest
        test "POST /users publishes user.created with the new user's id" do
          events = assert_event_published("user.created", subject: "#{SUBJECT}", count: 1) do
            post "/users", params: { user: { name: "Cy", email: "cy@example.com" } }
          end
          assert_response :created
          assert_equal({ "id" => response.parsed_body["id"], "email" => "cy@example.com" }, events.first.payload)
        end
      end
    RUBY
  }.freeze

  # Deliberately wrong expectations, outside spec/ and test/ so the default runs skip them.
  MISTAKEN_SPEC = "mistaken/user_mistaken_spec.rb"
  MISTAKEN_TEST = "mistaken/user_mistaken_test.rb"
  MISTAKEN_FILES = {
    MISTAKEN_SPEC => <<~RUBY,
      require "rails_helper"

      RSpec.describe User, :jetstream do
        it "expects the wrong payload" do
          expect { User.create!(id: 7, name: "Ann", email: "ann@example.com") }
            .to have_published_event("user.created").with_payload(id: 7, email: "someone@example.com")
        end

        it "expects one event when two are published" do
          expect { [8, 9].each { |id| User.create!(id: id, email: "u\#{id}@example.com") } }
            .to have_published_event("user.created").once
        end

        it "expects no event when one is published" do
          expect { User.create!(id: 10, email: "u10@example.com") }.not_to have_published_event("user.created")
        end
      end
    RUBY

    MISTAKEN_TEST => <<~RUBY
      require "test_helper"

      class UserMistakenTest < ActiveSupport::TestCase
        test "wrong payload" do
          assert_event_published("user.created", payload: { id: 7, email: "someone@example.com" }) do
            User.create!(id: 7, name: "Ann", email: "ann@example.com")
          end
        end

        test "once when twice published" do
          assert_event_published("user.created", count: 1) do
            [8, 9].each { |id| User.create!(id: id, email: "u\#{id}@example.com") }
          end
        end

        test "no events when one is published" do
          assert_no_events_published { User.create!(id: 10, email: "u10@example.com") }
        end
      end
    RUBY
  }.freeze

  def self.published_line(id, email) = "  - user.created on #{SUBJECT} payload=#{{ 'id' => id, 'email' => email }.inspect}"

  # The failure messages of the mistaken expectations, in file order.
  MISTAKEN_MESSAGES = [
    "expected the block to publish user.created with payload #{{ 'id' => 7, 'email' => 'someone@example.com' }.inspect}, " \
    "but it published 0 matching. Published:\n#{published_line(7, 'ann@example.com')}",
    "expected the block to publish user.created once, but it published 2 matching. Published:\n" \
    "#{published_line(8, 'u8@example.com')}\n#{published_line(9, 'u9@example.com')}"
  ].freeze
  NEGATED_RSPEC_MESSAGE = "expected the block not to publish user.created, but it did. Published:\n" \
                          "#{published_line(10, 'u10@example.com')}"
  NEGATED_MINITEST_MESSAGE = "expected no events to be published, but got:\n#{published_line(10, 'u10@example.com')}"

  RSpec.describe "Test mode in a generated Rails app (no nats-server)", :rails_app, :aggregate_failures do
    before(:all) do
      # Minitest needs no gem of its own: activesupport depends on it.
      @app = RailsApp.new(name: APP_NAME, extra_gems: %w[rspec-rails]).create!.generate!("jetstream_bridge:install", "rspec:install")
      APP_FILES.merge(MISTAKEN_FILES).each { |file, text| @app.write(file, text) }
      append("spec/rails_helper.rb", 'require "jetstream_bridge/testing/rspec"')
      # Outside assertion blocks too (fixtures, setup), nothing is sent.
      append("test/test_helper.rb", 'require "jetstream_bridge/testing/minitest"', "JetstreamBridge::Testing.fake!")
      @app.rails!("db:migrate", env: { "RAILS_ENV" => "test" })
      @closed_port = RailsApp.free_port
    end

    after(:all) { @app&.cleanup }

    attr_reader :app

    def append(file, *lines) = app.write(file, "#{app.read(file)}\n#{lines.join("\n")}\n")

    def test_env = { "RAILS_ENV" => "test", "NATS_URLS" => "nats://127.0.0.1:#{@closed_port}" }

    # `bundle exec rspec` with a JSON report; [output, status, report].
    def rspec(*files)
      FileUtils.rm_f(app.path("log/test.log"))
      out, status = app.run("bundle", "exec", "rspec", *files, "--format", "progress",
                            "--format", "json", "--out", "tmp/rspec.json", env: test_env)
      report = File.exist?(app.path("tmp/rspec.json")) ? JSON.parse(app.read("tmp/rspec.json")) : {}
      FileUtils.rm_f(app.path("tmp/rspec.json"))
      [out, status, report]
    end

    # `bin/rails test -v`; [output, status, { "Class#test_name" => seconds }].
    def rails_test(*files)
      FileUtils.rm_f(app.path("log/test.log"))
      out, status = app.rails("test", "-v", *files, env: test_env)
      times = out.scan(/^(\w+#test_.*) = (\d+\.\d+) s = [.FE]$/).to_h { |name, seconds| [name, Float(seconds)] }
      [out, status, times]
    end

    # A connection attempt logs "[JetstreamBridge] ... could not connect", and a publish
    # that is not faked writes an outbox row: the test log has neither.
    def expect_no_nats_contact
      log = File.exist?(app.path("log/test.log")) ? app.read("log/test.log") : ""
      expect(log.lines.grep(/\[JetstreamBridge\]|could not connect|INSERT INTO "jetstream_outbox_events"/)).to eq([])
    end

    it "passes the model and request specs, each well under a second, without contacting NATS" do
      out, status, report = rspec
      expect(status).to be_success, out
      expect(report.fetch("summary")).to include("example_count" => 5, "failure_count" => 0, "pending_count" => 0)
      times = report.fetch("examples").to_h { |e| [e["full_description"], e["run_time"]] }
      expect(times.keys).to include("User publishes user.created once it is created",
                                    "POST /users publishes user.created on the app's subject, once")
      expect(times.values).to all(be < 1.0), times.inspect
      expect_no_nats_contact
    end

    it "passes the model and integration tests under bin/rails test, each well under a second, without contacting NATS" do
      out, status, times = rails_test
      expect(status).to be_success, out
      expect(out).to include("4 runs, 6 assertions, 0 failures, 0 errors, 0 skips")
      expect(times.size).to eq(4), out
      expect(times.values).to all(be < 1.0), out
      expect_no_nats_contact
    end

    it "fails a mistaken RSpec expectation with a message listing what was published" do
      out, status, report = rspec(MISTAKEN_SPEC)
      expect(status.exitstatus).to eq(1), out
      expect(report.fetch("summary")).to include("example_count" => 3, "failure_count" => 3)
      messages = report.fetch("examples").sort_by { |e| e["line_number"] }.map { |e| e.dig("exception", "message") }
      expect(messages).to eq(MISTAKEN_MESSAGES + [NEGATED_RSPEC_MESSAGE])
      expect_no_nats_contact
    end

    it "fails a mistaken Minitest assertion with a message listing what was published" do
      out, status, = rails_test(MISTAKEN_TEST)
      expect(status.exitstatus).to eq(1), out
      expect(out).to include("3 runs, 3 assertions, 3 failures, 0 errors, 0 skips")
      (MISTAKEN_MESSAGES + [NEGATED_MINITEST_MESSAGE]).each { |message| expect(out).to include(message) }
      expect_no_nats_contact
    end
  end
end
