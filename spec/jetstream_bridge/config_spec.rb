# frozen_string_literal: true

# Configuration: documented defaults, environment fallbacks, the two configure forms,
# validation that reports every problem at once, durations, subject tokens, derived names.
# No server is needed: nothing here connects.
RSpec.describe "JetstreamBridge configuration" do
  # Variables the config reads; with_env unsets every one not given.
  def env_vars
    %w[NATS_URLS NATS_URL NATS_ENV RAILS_ENV RACK_ENV APP_NAME DESTINATION_APP
       NATS_USER NATS_PASSWORD NATS_TOKEN]
  end

  # Runs the block with exactly `vars` set among env_vars (others unset), then restores ENV.
  def with_env(vars = {})
    saved = env_vars.to_h { |k| [k, ENV[k]] }
    env_vars.each { |k| ENV.delete(k) }
    vars.each { |k, v| ENV[k.to_s] = v }
    JetstreamBridge.reset!
    yield
  ensure
    saved.each { |k, v| v.nil? ? ENV.delete(k) : ENV[k] = v }
    JetstreamBridge.reset!
  end

  def valid_settings
    { app_name: "api", destination_app: "worker", env: "test", nats_urls: "nats://127.0.0.1:4222" }
  end

  describe "defaults (README reference table)" do
    it "has the documented defaults when no environment variable is set" do
      with_env do
        c = JetstreamBridge.config
        expect(c.nats_urls).to eq("nats://localhost:4222")
        expect(c.env).to eq("development")
        expect(c.subject_layout).to eq(:env)
        expect(c.app_name).to be_nil
        expect(c.destination_app).to be_nil
        expect(c.use_outbox).to be(false)
        expect(c.use_inbox).to be(false)
        expect(c.use_dlq).to be(false)
        expect(c.max_deliver).to eq(5)
        expect(c.ack_wait).to eq("30s")
        expect(c.ack_wait_ms).to eq(30_000)
        expect(c.backoff).to eq(%w[1s 5s 15s])
        expect(c.backoff_ms).to eq([1_000, 5_000, 15_000])
        expect(c.logger).to respond_to(:info)
      end
    end

    it "requires app_name and destination_app, naming both and their variables" do
      with_env do
        expect { JetstreamBridge.config.validate! }.to raise_error(JetstreamBridge::MissingConfigurationError) { |e|
          expect(e.message).to include("app_name", "APP_NAME", "destination_app", "DESTINATION_APP")
        }
      end
    end

    it "accepts every option of the README's configure block" do
      with_env do
        JetstreamBridge.configure do |config|
          config.nats_urls = "nats://127.0.0.1:4222"
          config.env = "production"
          config.app_name = "api_service"
          config.destination_app = "notification_service"
          config.use_outbox = true
          config.use_inbox = true
          config.use_dlq = true
          config.max_deliver = 5
          config.ack_wait = "30s"
          config.backoff = %w[1s 5s 15s 30s]
          config.outbox_model = "CustomOutboxEvent"
          config.inbox_model = "CustomInboxEvent"
          config.logger = Logger.new(IO::NULL)
        end
        c = JetstreamBridge.config
        expect([c.use_outbox, c.use_inbox, c.use_dlq]).to eq([true, true, true])
        expect([c.outbox_model, c.inbox_model]).to eq(%w[CustomOutboxEvent CustomInboxEvent])
        expect(c.backoff_ms).to eq([1_000, 5_000, 15_000, 30_000])
      end
    end
  end

  describe "environment fallbacks" do
    it "takes nats_urls from NATS_URLS before NATS_URL" do
      with_env("NATS_URLS" => "nats://a:1,nats://b:2", "NATS_URL" => "nats://c:3") do
        expect(JetstreamBridge.config.nats_urls).to eq("nats://a:1,nats://b:2")
        expect(JetstreamBridge.config.urls).to eq(%w[nats://a:1 nats://b:2])
      end
    end

    it "falls back to NATS_URL when NATS_URLS is unset" do
      with_env("NATS_URL" => "nats://c:3") do
        expect(JetstreamBridge.config.nats_urls).to eq("nats://c:3")
      end
    end

    it "takes app_name from APP_NAME and destination_app from DESTINATION_APP" do
      with_env("APP_NAME" => "billing", "DESTINATION_APP" => "ledger") do
        expect(JetstreamBridge.config.app_name).to eq("billing")
        expect(JetstreamBridge.config.destination_app).to eq("ledger")
      end
    end

    it "takes env from NATS_ENV before RAILS_ENV" do
      with_env("NATS_ENV" => "staging", "RAILS_ENV" => "production") do
        expect(JetstreamBridge.config.env).to eq("staging")
      end
    end

    it "falls back to RAILS_ENV when NATS_ENV is unset" do
      with_env("RAILS_ENV" => "production") do
        expect(JetstreamBridge.config.env).to eq("production")
      end
    end

    it "reset! goes back to the environment's values" do
      with_env("APP_NAME" => "from_env", "DESTINATION_APP" => "dest_env") do
        JetstreamBridge.configure(app_name: "explicit", destination_app: "other")
        expect(JetstreamBridge.config.app_name).to eq("explicit")
        JetstreamBridge.reset!
        expect(JetstreamBridge.config.app_name).to eq("from_env")
        expect(JetstreamBridge.config.destination_app).to eq("dest_env")
      end
    end
  end

  describe "configure" do
    it "takes a block, validates and returns the config" do
      with_env do
        result = JetstreamBridge.configure do |c|
          valid_settings.each { |k, v| c.public_send("#{k}=", v) }
        end
        expect(result).to be(JetstreamBridge.config)
        expect(result.app_name).to eq("api")
      end
    end

    it "takes a Hash with symbol or string keys" do
      with_env do
        JetstreamBridge.configure(valid_settings)
        expect(JetstreamBridge.config.destination_app).to eq("worker")
        JetstreamBridge.configure("max_deliver" => 7, "ack_wait" => 10)
        expect(JetstreamBridge.config.max_deliver).to eq(7)
        expect(JetstreamBridge.config.ack_wait_ms).to eq(10_000)
        expect(JetstreamBridge.config.app_name).to eq("api") # earlier settings kept
      end
    end

    it "raises ArgumentError naming an unknown key" do
      with_env do
        expect { JetstreamBridge.configure(valid_settings.merge(nats_url: "nats://x:1")) }
          .to raise_error(ArgumentError, /nats_url\b/)
        expect { JetstreamBridge.configure("max_delivr" => 3) }
          .to raise_error(ArgumentError, /max_delivr/)
      end
    end

    it "raises ConfigurationError when the block leaves a bad value" do
      with_env do
        expect do
          JetstreamBridge.configure { |c| valid_settings.merge(ack_wait: "soon").each { |k, v| c.public_send("#{k}=", v) } }
        end.to raise_error(JetstreamBridge::ConfigurationError, /ack_wait.*soon/)
      end
    end

    it "is all or nothing: a configure that raises leaves the previous settings untouched" do
      with_env do
        live = JetstreamBridge.configure(valid_settings.merge(backoff: %w[1s 5s]))
        expect { JetstreamBridge.configure(destination_app: "billing", max_deliver: 0) }
          .to raise_error(JetstreamBridge::ConfigurationError, /max_deliver/)
        expect { JetstreamBridge.configure(destination_app: "billing", nats_url: "nats://x:1") }
          .to raise_error(ArgumentError, /nats_url\b/)
        expect do
          JetstreamBridge.configure do |c|
            c.destination_app = "billing"
            c.backoff << "30s" # changed in place
            raise IOError, "the block failed half-way"
          end
        end.to raise_error(IOError)
        expect(JetstreamBridge.config).to be(live)
        expect([live.destination_app, live.max_deliver, live.backoff]).to eq(["worker", 5, %w[1s 5s]])
        expect(live.source_subject).to eq("test.api.sync.worker")
      end
    end

    it "applies a configure that succeeds to the object JetstreamBridge.config returned before" do
      with_env do
        held = JetstreamBridge.config
        JetstreamBridge.configure(valid_settings)
        JetstreamBridge.configure { |c| c.destination_app = "billing" }
        expect(JetstreamBridge.config).to be(held)
        expect(held.destination_app).to eq("billing")
        expect(held.source_subject).to eq("test.api.sync.billing")
      end
    end

    it "composes several calls: a required setting missing at the end of one is no error until first use" do
      with_env do
        expect { JetstreamBridge.configure { |c| c.env = "test"; c.nats_urls = "nats://127.0.0.1:1" } }.not_to raise_error
        expect { JetstreamBridge.configure(app_name: "api") }.not_to raise_error
        # First use, before destination_app is set: one error listing what is missing.
        [-> { JetstreamBridge.publish(event_type: "user.created") },
         -> { JetstreamBridge.publish_batch([{ event_type: "user.created" }]) },
         -> { JetstreamBridge.subscribe { |*| nil } },
         -> { JetstreamBridge.ensure_topology! },
         -> { JetstreamBridge.config.validate! }].each do |first_use|
          expect(&first_use).to raise_error(JetstreamBridge::MissingConfigurationError, /destination_app is required/)
        end
        JetstreamBridge.configure { |c| c.destination_app = "worker" }
        expect(JetstreamBridge.config.source_subject).to eq("test.api.sync.worker")
        expect(JetstreamBridge.config.validate!).to be(true)
        expect { JetstreamBridge.configure(max_deliver: 0) }.to raise_error(JetstreamBridge::ConfigurationError, /max_deliver/)
      end
    end

    it "does not connect" do
      with_env { JetstreamBridge.configure(valid_settings.merge(nats_urls: "nats://127.0.0.1:1")) }
      expect(JetstreamBridge.connected?).to be(false)
    end
  end

  describe "validate!" do
    it "reports every problem at once" do
      c = JetstreamBridge::Config.new
      c.env = "prod.eu"
      c.app_name = "my app"
      c.destination_app = "dest*"
      c.nats_urls = "localhost:4222"
      c.max_deliver = 0
      c.ack_wait = "soon"
      c.backoff = ["1s", "later"]
      c.request_timeout = -1
      c.retry_strategy = :random
      problems = nil
      expect { c.validate! }.to raise_error(JetstreamBridge::ConfigurationError) { |e| problems = e.message }
      expect(problems).to include("env", "prod.eu")
      expect(problems).to include("app_name", "my app")
      expect(problems).to include("destination_app", "dest*")
      expect(problems).to include("nats_urls", "localhost:4222")
      expect(problems).to include("max_deliver")
      expect(problems).to match(/ack_wait.*soon/)
      expect(problems).to match(/backoff\[1\].*later/)
      expect(problems).to include("request_timeout")
      expect(problems).to include("retry_strategy")
      expect(c.errors.size).to be >= 9
    end

    it "returns true for a valid config" do
      c = JetstreamBridge::Config.new
      c.assign(valid_settings)
      expect(c.errors).to eq([])
      expect(c.validate!).to be(true)
    end

    it "accepts the README's max_deliver 5 with five backoff entries (backoff is applied by the bridge)" do
      c = JetstreamBridge::Config.new.assign(valid_settings)
      c.max_deliver = 5
      c.backoff = %w[1s 5s 15s 30s 60s]
      expect(c.validate!).to be(true)
      expect(c.backoff_ms).to eq([1_000, 5_000, 15_000, 30_000, 60_000])
    end

    it "accepts :exponential, :linear and any object with delay_for(attempt, error)" do
      c = JetstreamBridge::Config.new.assign(valid_settings)
      custom = Class.new { def delay_for(_attempt, _error) = 0 }.new
      [:exponential, :linear, custom].each do |strategy|
        c.retry_strategy = strategy
        expect(c.errors).to eq([]), "retry_strategy #{strategy.inspect}"
      end
    end
  end

  describe "durations" do
    subject(:config) { JetstreamBridge::Config.new.assign(valid_settings) }

    {
      "30s" => 30_000, "500ms" => 500, "1m" => 60_000, "1.5s" => 1_500, "2h" => 7_200_000,
      30 => 30_000, 1.5 => 1_500, 0.25 => 250
    }.each do |given, ms|
      it "parses #{given.inspect} as #{ms} ms" do
        config.ack_wait = given
        config.request_timeout = given
        expect(config.ack_wait_ms).to eq(ms)
        expect(config.request_timeout_ms).to eq(ms)
        expect(config.errors).to eq([])
      end
    end

    ["soon", "", "10 parsecs", "-5s", "0s", 0, -1, nil, [], true, "1e400", "s"].each do |bad|
      it "rejects #{bad.inspect}, naming the option" do
        config.ack_wait = bad
        expect { config.ack_wait_ms }.to raise_error(JetstreamBridge::ConfigurationError, /ack_wait/)
        expect(config.errors.join).to include("ack_wait")
      end
    end

    it "names the backoff entry at fault" do
      config.backoff = ["1s", "2 fortnights"]
      expect { config.backoff_ms }.to raise_error(JetstreamBridge::ConfigurationError, /backoff\[1\].*fortnights/)
    end

    it "rejects a backoff that is not an Array" do
      config.backoff = "1s"
      expect(config.errors.join).to include("backoff")
    end

    it "never turns an accepted positive duration into zero" do
      # A value the parser accepts must not silently become 0 ms (0 means "no wait" or
      # "server default" on the wire): either reject it naming the option, or round up.
      ["100us", 0.0001, "0.2ms"].each do |tiny|
        config.request_timeout = tiny
        begin
          ms = config.request_timeout_ms
        rescue JetstreamBridge::ConfigurationError => e
          expect(e.message).to include("request_timeout")
          next
        end
        expect(ms).to be >= 1, "request_timeout #{tiny.inspect} became #{ms} ms"
      end
    end
  end

  describe "unrecoverable_errors" do
    it "must be exception classes: a String would make the consumer's rescue raise TypeError" do
      config = JetstreamBridge::Config.new.assign(valid_settings)
      config.unrecoverable_errors = ["ActiveRecord::RecordInvalid", ArgumentError, 42]
      expect(config.errors.join).to include('unrecoverable_errors must be exception classes').and include('"ActiveRecord::RecordInvalid", 42')
      config.unrecoverable_errors = [ArgumentError, Class.new(StandardError)]
      expect(config.errors).to eq([])
    end
  end

  describe "subject tokens" do
    subject(:config) { JetstreamBridge::Config.new.assign(valid_settings) }

    %i[env app_name destination_app].each do |option|
      ["a.b", "a*", ">", "with space", "tab\there", "line\nbreak", "nul\u0000", "bell\u0007", "billing/eu", "a\\b"].each do |bad|
        it "rejects #{option} = #{bad.inspect}, naming the option and the value" do
          config.public_send("#{option}=", bad)
          message = config.errors.join("\n")
          expect(message).to include(option.to_s)
          expect(message).to include(bad[/\A[^[:cntrl:]\\]*/]) # the value, up to a control char or \ (shown escaped)
          expect { config.validate! }.to raise_error(JetstreamBridge::ConfigurationError)
          expect { config.names }.to raise_error(JetstreamBridge::InvalidSubjectError, /#{option}/)
        end
      end
    end

    it "rejects an env that would make every subject a system subject ($SYS, _INBOX)" do
      %w[$SYS $JS _INBOX].each do |env|
        config.env = env
        expect(config.errors.join).to include("system prefix"), env
      end
    end

    it "accepts dashes and underscores" do
      config.env = "prod-eu_1"
      config.app_name = "api-service_2"
      expect(config.errors).to eq([])
    end
  end

  describe "derived names" do
    it "are exactly as the README documents them" do
      c = JetstreamBridge::Config.new.assign(env: "production", app_name: "api_service",
                                             destination_app: "notification_service")
      expect(c.stream_name).to eq("production-jetstream-bridge-stream")
      expect(c.source_subject).to eq("production.api_service.sync.notification_service")
      expect(c.destination_subject).to eq("production.notification_service.sync.api_service")
      expect(c.dlq_subject).to eq("production.sync.dlq")
      expect(c.durable_name).to eq("production-api_service-workers")
    end
  end

  describe "subject_layout" do
    def app_layout(**settings)
      JetstreamBridge::Config.new.assign(valid_settings.merge(subject_layout: :app, **settings))
    end

    it "gives under :app the pure-Ruby gem 4.5+'s names, with no env in any of them" do
      c = app_layout(env: "production", app_name: "api_service", destination_app: "notification_service")
      expect(c.stream_name).to eq("jetstream-bridge-stream")
      expect(c.source_subject).to eq("api_service.sync.notification_service")
      expect(c.destination_subject).to eq("notification_service.sync.api_service")
      expect(c.dlq_subject).to eq("api_service.sync.dlq")
      expect(c.durable_name).to eq("api_service-workers")
      expect(c.names["retention"]).to eq("workqueue")
      expect(c.stream_spec.retention).to eq("workqueue")
      expect(JetstreamBridge::Config.new.assign(valid_settings).stream_spec.retention).to eq("limits")
    end

    it "under :app neither requires nor checks env, and names do not change with it" do
      names = app_layout.names
      [nil, "", "$SYS", "a.b"].each do |env|
        c = app_layout(env: env)
        expect(c.errors).to eq([]), env.inspect
        expect(c.names).to eq(names)
      end
    end

    it "is never inferred: an env left nil under the default layout is still an error" do
      c = JetstreamBridge::Config.new.assign(valid_settings.merge(env: nil))
      expect(c.errors).to include("env is required")
    end

    it "takes stream_name over the :app stream's name" do
      expect(app_layout(stream_name: "shared-stream").stream_name).to eq("shared-stream")
    end

    it "takes the Strings \"env\" and \"app\" (an initializer reading ENV)" do
      expect(app_layout(subject_layout: "app").source_subject).to eq("api.sync.worker")
      expect(app_layout(subject_layout: "env").source_subject).to eq("test.api.sync.worker")
    end

    it "rejects any other value, naming the setting and the values it takes" do
      [nil, :v4, "apps", 1].each do |bad|
        c = app_layout(subject_layout: bad)
        expect(c.errors).to include("subject_layout must be :env or :app, got #{bad.inspect}")
        expect { JetstreamBridge.configure(subject_layout: bad) }.to raise_error(JetstreamBridge::ConfigurationError, /subject_layout/)
      end
    end

    it "under :app rejects an app_name or destination_app that would begin subjects with a system prefix" do
      expect(app_layout(app_name: "$JS").errors.join).to include("app_name", "system prefix")
      expect(app_layout(destination_app: "_INBOX").errors.join).to include("destination_app", "system prefix")
    end
  end

  describe "nats_urls" do
    it "accepts one URL or a comma-separated list (spaces tolerated)" do
      c = JetstreamBridge::Config.new.assign(valid_settings)
      c.nats_urls = "nats://a:4222, nats://b:4222 ,nats://c:4222"
      expect(c.urls).to eq(%w[nats://a:4222 nats://b:4222 nats://c:4222])
      expect(c.errors).to eq([])
    end

    it "rejects an empty list" do
      c = JetstreamBridge::Config.new.assign(valid_settings)
      c.nats_urls = " , "
      expect(c.errors.join).to include("nats_urls")
    end
  end
end
