# frozen_string_literal: true

require_relative "../support/stderr_capture"

require "tempfile"

# Credentials (in URLs, user/password, tokens) are used to connect and never appear in
# errors, logs, health checks, debug output or inspect strings. Real servers with auth.
RSpec.describe "JetstreamBridge secrets" do
  # Secrets the servers below are configured with (also used in before(:context)).
  def self.password = "s3cretpass"
  def self.token = "s3cr3ttoken42"
  def password = self.class.password
  def token = self.class.token

  def url_with(userinfo, server)
    "nats://#{userinfo}@127.0.0.1:#{server.port}"
  end

  # Everything the bridge shows about itself, plus the messages of `errors`.
  def surfaces(errors = [])
    texts = errors.flat_map { |e| [e.message, e.inspect, e.full_message(highlight: false)] }
    texts << JetstreamBridge.config.inspect << JetstreamBridge.config.to_s << JetstreamBridge.config.to_h.inspect
    texts << JetstreamBridge.health_check.inspect
    texts << JetstreamBridge::DebugHelper.debug_info.inspect
    texts << log_output
    texts
  end

  def expect_hidden(secret, texts)
    leaks = texts.select { |t| t.include?(secret) }
    expect(leaks).to be_empty, "#{secret} leaked in:\n#{leaks.map { |l| l[0, 400] }.join("\n---\n")}"
  end

  # Runs the block; returns [result or nil, [errors raised]].
  def attempt
    [yield, []]
  rescue StandardError => e
    [nil, [e]]
  end

  include StderrCapture

  def publish_one
    JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })
  end

  context "with a user/password server" do
    before(:context) do
      @server = NatsServer.new(config: "authorization { user: user, password: #{password} }").start
    end
    after(:context) { @server&.cleanup }

    it "connects with user and password settings and never shows the password" do
      stderr = capturing_stderr do
        configure_bridge(server: @server.url, user: "user", password: password)
        expect(publish_one).to be(true)
        expect(JetstreamBridge.config.to_h[:password]).to eq("[REDACTED]")
        expect_hidden(password, surfaces)
      end
      expect_hidden(password, [stderr])
    end

    it "connects with the credentials given in the URL" do
      configure_bridge(server: url_with("user:#{password}", @server))
      expect(publish_one).to be(true)
    end

    it "never shows a password given in the URL (publish, health, debug, inspect, logs)" do
      stderr = capturing_stderr do
        configure_bridge(server: url_with("user:#{password}", @server))
        _, errors = attempt { publish_one }
        texts = surfaces(errors)
        expect(JetstreamBridge.config.inspect).to include("nats://[REDACTED]@127.0.0.1:#{@server.port}")
        expect_hidden(password, texts)
      end
      expect_hidden(password, [stderr])
    end

    it "raises AuthorizationError for a wrong password in the URL, without showing it" do
      wrong = "wr0ng-#{SecureRandom.hex(6)}"
      configure_bridge(server: url_with("user:#{wrong}", @server), publish_attempts: 1)
      _, errors = attempt { publish_one }
      expect(errors.first).to be_a(JetstreamBridge::AuthorizationError)
      expect_hidden(wrong, surfaces(errors))
    end

    it "raises AuthorizationError for a wrong password setting, without retrying or showing it" do
      wrong = "wr0ng-#{SecureRandom.hex(6)}"
      calls = []
      strategy = Object.new
      strategy.define_singleton_method(:delay_for) { |attempt, error| calls << [attempt, error.class]; 0 }
      configure_bridge(server: @server.url, user: "user", password: wrong,
                       retry_strategy: strategy, publish_attempts: 3)
      _, errors = attempt { publish_one }
      expect(errors.first).to be_a(JetstreamBridge::AuthorizationError)
      expect(calls).to eq([]) # wrong credentials do not become right by retrying
      expect_hidden(wrong, surfaces(errors))
    end

    it "never shows the password when the connection fails (no server on the port)" do
      dead = NatsServer.free_ports(1, exclude: [@server.port, shared_server.port]).first
      configure_bridge(server: "nats://user:#{password}@127.0.0.1:#{dead}", password: password, user: "user")
      _, errors = attempt { publish_one }
      expect(errors.first).to be_a(JetstreamBridge::ConnectionError)
      expect(errors.first.message).to include(dead.to_s)
      expect_hidden(password, surfaces(errors))
    end

    it "never shows any part of a password with @, : and / written unencoded in the URL" do
      tricky = "p@ss:w/rd"
      configure_bridge(server: url_with("alice:#{tricky}", @server), publish_attempts: 1, connect_timeout: "1s")
      _, errors = attempt { publish_one }
      texts = surfaces(errors)
      expect(texts.join).to include("[REDACTED]@127.0.0.1:#{@server.port}")
      ["p@ss", "ss:w", "w/rd"].each { |part| expect_hidden(part, texts) }
    end

    it "keeps secrets out of stored data: the DLQ's X-Error-Message and the inbox's last_error" do
      require_relative "../support/consumer_helpers"
      require_relative "../support/active_record_db"
      extend ConsumerHelpers
      db = ActiveRecordDb.sqlite
      db.activate!
      db.truncate!
      configure_bridge(server: url_with("user:#{password}", @server), use_dlq: true, use_inbox: true,
                       max_deliver: 2, backoff: %w[50ms])
      id, = publish_incoming(1)
      leak = "cannot reach nats://user:#{password}@billing:4222 (password #{password})"
      consumer, = run_recording_consumer { |_| raise leak }
      eventually(timeout: 10) { dlq_messages.size == 1 }
      consumer.stop!
      message = dlq_messages.first[2]["X-Error-Message"]
      expect(message).to include("cannot reach nats://[REDACTED]@billing:4222")
      expect_hidden(password, [message])
      last_error = JetstreamBridge::InboxEvent.find_by!(event_id: id).last_error
      expect(last_error).to include("[REDACTED]")
      expect_hidden(password, [last_error])
    ensure
      stop_consumers
    end

    it "never shows the password of any URL of a list" do
      dead = NatsServer.free_ports(1, exclude: [@server.port, shared_server.port]).first
      urls = "nats://user:#{password}@127.0.0.1:#{dead},#{url_with("user:#{password}", @server)}"
      configure_bridge(server: urls, user: "user", password: password)
      _, errors = attempt { publish_one }
      expect_hidden(password, surfaces(errors))
    end

    it "never shows the password of a URL without a scheme in validation errors" do
      configure_bridge(server: @server.url)
      secret = "n0scheme-#{SecureRandom.hex(6)}" # never registered by a connect of this process
      JetstreamBridge.config.nats_urls = "user:#{secret}@127.0.0.1:#{@server.port}"
      errors = []
      begin
        JetstreamBridge.config.validate!
      rescue JetstreamBridge::ConfigurationError => e
        errors << e
      end
      expect(errors.first&.message).to include("nats_urls")
      expect_hidden(secret, surfaces(errors))
    end
  end

  context "with a user/password server that restarts while connected" do
    around do |example|
      NatsServer.with_server(config: "authorization { user: user, password: #{password} }") do |server|
        @server = server
        example.run
      end
    end

    it "never shows the password in reconnect logs or health output" do
      configure_bridge(server: url_with("user:#{password}", @server), user: "user", password: password,
                       request_timeout: "1s")
      expect(publish_one).to be(true)
      @server.restart(kill: true)
      eventually(timeout: 20, interval: 0.2) do
        publish_one
      rescue JetstreamBridge::Error
        false
      end
      expect(log_output).to match(/disconnected/i)
      expect_hidden(password, surfaces)
    end
  end

  # Every form nats_urls takes (README: credentials in URLs never appear anywhere): the
  # user info ends at the LAST '@' before the host, with or without a scheme, whatever the
  # password holds. Secrets are fresh per example: one registered by an earlier connect
  # would be masked by the core's registry and hide a miss.
  context "with credentials in every form of nats_urls entry" do
    def fragments(secret)
      secret.split(%r{[@:/?#]}).select { |part| part.size >= 3 }
    end

    def dead_port = NatsServer.free_ports(1, exclude: [shared_server.port]).first

    def forms
      hex = SecureRandom.hex(4)
      dead = dead_port
      {
        "no scheme, '@' in the password" => ["K9x@fQ2-#{hex}-tail", ->(p) { "deploy:#{p}@nats.internal:4222" }],
        "no scheme, token only" => ["tok-#{hex}-en", ->(p) { "#{p}@nats.internal:4222" }],
        "no scheme, IPv6 host" => ["v6@pw-#{hex}", ->(p) { "carol:#{p}@[::1]:4222" }],
        "scheme, '@ : / ? #' in the password" => ["pa:ss/wo?rd#fr@ag-#{hex}", ->(p) { "nats://alice:#{p}@127.0.0.1:#{dead}" }],
        "scheme, IPv6 host" => ["six@six-#{hex}", ->(p) { "nats://bob:#{p}@[::1]:#{dead}" }],
        "a list mixing both" => ["li@st-#{hex}", ->(p) { "nats://127.0.0.1:#{dead},dave:#{p}@nats.internal:4222, nats://erin:#{p}@127.0.0.1:#{dead}" }]
      }
    end

    it "never shows any part of the password in errors, inspect, health or debug output" do
      forms.each do |form, (secret, url)|
        configure_bridge(publish_attempts: 1, connect_timeout: "500ms")
        JetstreamBridge.config.nats_urls = url.call(secret) # configure itself refuses one without a scheme
        _, errors = attempt do
          JetstreamBridge.config.validate!
          publish_one
        end
        expect(errors.size).to eq(1), form
        expect(errors.first.message).to include("[REDACTED]@"), "#{form}: #{errors.first.message}"
        texts = surfaces(errors)
        expect(JetstreamBridge.config.inspect).to include("[REDACTED]@"), form
        fragments(secret).each { |part| expect_hidden(part, texts) }
      end
    end

    it "never shows any part of such a URL's password in log lines and dead letters (a handler's error naming it)" do
      require_relative "../support/consumer_helpers"
      extend ConsumerHelpers
      configure_bridge(use_dlq: true, max_deliver: 1)
      urls = forms.values.map { |secret, url| [secret, url.call(secret)] }
      publish_incoming(1)
      consumer, = run_recording_consumer { |_| raise "cannot reach #{urls.map(&:last).join(', ')} (check #{urls.first.last})" }
      eventually(timeout: 10) { dlq_messages.size == 1 }
      consumer.stop!
      message = dlq_messages.first[2]["X-Error-Message"]
      expect(message).to include("cannot reach [REDACTED]@nats.internal:4222")
      expect(log_output).to include("cannot reach [REDACTED]@nats.internal:4222")
      urls.each { |secret, _| fragments(secret).each { |part| expect_hidden(part, [message, log_output]) } }
    ensure
      stop_consumers
    end
  end

  context "with a token server" do
    before(:context) { @server = NatsServer.new(config: "authorization { token: #{token} }").start }
    after(:context) { @server&.cleanup }

    it "connects with the token setting and never shows it" do
      stderr = capturing_stderr do
        configure_bridge(server: @server.url, token: token)
        expect(publish_one).to be(true)
        expect(JetstreamBridge.config.to_h[:token]).to eq("[REDACTED]")
        expect_hidden(token, surfaces)
      end
      expect_hidden(token, [stderr])
    end

    it "connects with a token given in the URL" do
      configure_bridge(server: url_with(token, @server))
      expect(publish_one).to be(true)
    end

    it "never shows a token given in the URL" do
      configure_bridge(server: url_with(token, @server))
      _, errors = attempt { publish_one }
      expect_hidden(token, surfaces(errors))
    end

    it "raises AuthorizationError for a wrong token without showing it" do
      wrong = "wrong-token-#{SecureRandom.hex(6)}"
      configure_bridge(server: @server.url, token: wrong, publish_attempts: 1)
      _, errors = attempt { publish_one }
      expect(errors.first).to be_a(JetstreamBridge::AuthorizationError)
      expect_hidden(wrong, surfaces(errors))
    end

    it "never shows the token when the connection fails" do
      dead = NatsServer.free_ports(1, exclude: [@server.port, shared_server.port]).first
      configure_bridge(server: "nats://127.0.0.1:#{dead}", token: token)
      _, errors = attempt { publish_one }
      expect(errors.first).to be_a(JetstreamBridge::ConnectionError)
      expect_hidden(token, surfaces(errors))
    end
  end
end
