# frozen_string_literal: true

require "tempfile"
require "timeout"
require_relative "../support/test_pki"
require_relative "../support/consumer_helpers"

# Every authentication and TLS option against a real nats-server configured for it: the
# setting, its environment fallback, and the failure modes (wrong secret, unknown CA, bad
# credentials file) failing fast with an error that says which one and shows no secret.
RSpec.describe "Authentication and TLS against real servers" do
  def publish_one
    JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })
  end

  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # [error, seconds] for a publish expected to fail.
  def failing_publish
    started = monotonic
    publish_one
    raise "publish unexpectedly succeeded"
  rescue JetstreamBridge::Error => e
    [e, monotonic - started]
  end

  # Sets ENV vars for the block (nil removes one), then restores them.
  def with_env(vars)
    saved = vars.keys.to_h { |k| [k, ENV.fetch(k, nil)] }
    vars.each { |k, v| v.nil? ? ENV.delete(k) : ENV[k] = v }
    yield
  ensure
    saved.each { |k, v| v.nil? ? ENV.delete(k) : ENV[k] = v }
  end

  def texts_of(error)
    [error.message, error.inspect, error.full_message(highlight: false), JetstreamBridge.config.inspect,
     JetstreamBridge.health_check.inspect, log_output]
  end

  def expect_hidden(secret, texts)
    leaks = texts.select { |t| t.include?(secret) }
    expect(leaks).to be_empty, "#{secret[0, 12]}... leaked in:\n#{leaks.map { |l| l[0, 300] }.join("\n---\n")}"
  end

  before(:context) { @dir = Dir.mktmpdir("jsb-auth-") }
  after(:context) { FileUtils.rm_rf(@dir) }

  context "user and password" do
    before(:context) do
      @password = "pw-#{SecureRandom.hex(8)}"
      @server = NatsServer.new(config: "authorization { user: app, password: \"#{@password}\" }").start
    end
    after(:context) { @server&.cleanup }

    it "connects with the user and password settings" do
      configure_bridge(server: @server.url, user: "app", password: @password)
      expect(publish_one).to be(true)
    end

    it "connects with NATS_USER and NATS_PASSWORD from the environment" do
      with_env("NATS_USER" => "app", "NATS_PASSWORD" => @password) do
        configure_bridge(server: @server.url)
        expect(JetstreamBridge.config.user).to eq("app")
        expect(publish_one).to be(true)
      end
    end

    it "connects with credentials in the URL" do
      configure_bridge(server: "nats://app:#{@password}@127.0.0.1:#{@server.port}")
      expect(publish_one).to be(true)
    end

    it "fails fast on a wrong password with an AuthorizationError naming user/password, without the password" do
      wrong = "wrong-#{SecureRandom.hex(8)}"
      configure_bridge(server: @server.url, user: "app", password: wrong)
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::AuthorizationError)
      expect(error.message).to match(/authorization/i).and include("user \"app\" with a password")
      expect(took).to be < 2
      expect_hidden(wrong, texts_of(error))
    end

    it "fails fast when no credentials are given, saying none were" do
      configure_bridge(server: @server.url)
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::AuthorizationError)
      expect(error.message).to include("auth: none")
      expect(took).to be < 2
    end
  end

  context "a user the server may not let publish to the bridge's subject" do
    before(:context) do
      @password = "pw-#{SecureRandom.hex(8)}"
      @env = "perm#{SecureRandom.hex(3)}"
      permissions = "permissions: { publish: { deny: [\"#{@env}.app.sync.other\"] } }"
      @server = NatsServer.new(config: "authorization { users = [ { user: app, password: \"#{@password}\", #{permissions} } ] }").start
    end
    after(:context) { @server&.cleanup }

    it "fails at once with an AuthorizationError naming the subject, not after the ack timeout" do
      configure_bridge(server: @server.url, env: @env, user: "app", password: @password, request_timeout: "10s")
      JetstreamBridge.ensure_topology! # the JetStream API is allowed; only the subject is not
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::AuthorizationError)
      expect(error.message).to include("may not publish to \"#{@env}.app.sync.other\"")
      expect(took).to be < 3
      expect_hidden(@password, texts_of(error))
    end

    it "fails a batch's rows for that subject at once and publishes the rest" do
      configure_bridge(server: @server.url, env: @env, user: "app", password: @password, request_timeout: "10s")
      JetstreamBridge.ensure_topology!
      allowed = JetstreamBridge.config.destination_subject # in the stream, and not denied
      events = Array.new(6) { |i| { event_type: "user.created", payload: { id: i } } }
      events += Array.new(3) { |i| { event_type: "user.created", payload: { id: 10 + i }, subject: allowed } }
      started = monotonic
      result = JetstreamBridge.publish_batch(events, window: 4)
      took = monotonic - started

      expect(result.published).to eq(3)
      expect(result.failed.map(&:first)).to eq([0, 1, 2, 3, 4, 5])
      expect(result.failed.map { |row| row[2] }.uniq).to eq(["AuthorizationError"])
      expect(result.failed.first[3]).to include("may not publish to \"#{@env}.app.sync.other\"")
      expect(took).to be < 3
      stream = JetstreamBridge.config.stream_name
      stored = JSON.parse(JetstreamBridge::Connection.client.stream_info(stream))["state"]["messages"]
      expect(stored).to eq(3)
    end
  end

  context "token" do
    before(:context) do
      @token = "tok-#{SecureRandom.hex(12)}"
      @server = NatsServer.new(config: "authorization { token: \"#{@token}\" }").start
    end
    after(:context) { @server&.cleanup }

    it "connects with the token setting, NATS_TOKEN, and a token in the URL" do
      configure_bridge(server: @server.url, token: @token)
      expect(publish_one).to be(true)
      with_env("NATS_TOKEN" => @token) do
        configure_bridge(server: @server.url)
        expect(publish_one).to be(true)
      end
      configure_bridge(server: "nats://#{@token}@127.0.0.1:#{@server.port}")
      expect(publish_one).to be(true)
    end

    it "fails fast on a wrong token, naming the token method without its value" do
      wrong = "wrongtok-#{SecureRandom.hex(8)}"
      configure_bridge(server: @server.url, token: wrong)
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::AuthorizationError)
      expect(error.message).to include("auth: token")
      expect(took).to be < 2
      expect_hidden(wrong, texts_of(error))
    end
  end

  context "NKey" do
    before(:context) do
      @user = NKeys.pair(:user)
      @server = NatsServer.new(config: "authorization { users = [ { nkey: #{@user.public_key} } ] }").start
    end
    after(:context) { @server&.cleanup }

    it "connects with the nkey_seed setting and with NATS_NKEY_SEED" do
      configure_bridge(server: @server.url, nkey_seed: @user.seed)
      expect(publish_one).to be(true)
      expect(JetstreamBridge.config.inspect).not_to include(@user.seed)
      with_env("NATS_NKEY_SEED" => @user.seed) do
        configure_bridge(server: @server.url)
        expect(publish_one).to be(true)
      end
    end

    it "fails fast with an AuthorizationError for a seed the server does not know" do
      stranger = NKeys.pair(:user)
      configure_bridge(server: @server.url, nkey_seed: stranger.seed)
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::AuthorizationError)
      expect(error.message).to include("NKey seed")
      expect(took).to be < 2
      expect_hidden(stranger.seed, texts_of(error))
    end

    it "rejects a malformed seed at configure time, naming the setting and not the value" do
      garbage = "SUnotaseed-#{SecureRandom.hex(10)}"
      expect { configure_bridge(server: @server.url, nkey_seed: garbage) }
        .to raise_error(JetstreamBridge::ConfigurationError, /nkey_seed/) { |e| expect(e.message).not_to include(garbage) }
    end
  end

  context "credentials file (operator, account and user JWTs)" do
    NatsBinaries.all.each do |bin|
      context "on nats-server #{bin[:version]}" do
        before(:context) do
          @operator = NKeys::Operator.new
          @user = @operator.account("APP").user
          @creds = File.join(@dir, "app-#{bin[:version]}.creds")
          File.write(@creds, @user.creds)
          @server = NatsServer.new(binary: bin, config: NKeys.operator_config(@operator, @user.account)).start
        end
        after(:context) { @server&.cleanup }

        it "connects with credentials_file and with NATS_CREDENTIALS, and consumes" do
          configure_bridge(server: @server.url, credentials_file: @creds)
          expect(publish_one).to be(true)
          with_env("NATS_CREDENTIALS" => @creds) do
            configure_bridge(server: @server.url)
            expect(JetstreamBridge.config.credentials_file).to eq(@creds)
            JetstreamBridge.publish(event_type: "user.created", payload: { id: 2 },
                                    subject: JetstreamBridge.config.destination_subject)
            seen = Queue.new
            consumer = JetstreamBridge.subscribe { |event, *| seen << event["payload"]["id"] }
            thread = Thread.new { consumer.run! }
            expect(Timeout.timeout(10) { seen.pop }).to eq(2)
            consumer.stop!
            expect(thread.join(10)).to be(thread)
          end
        end

        it "fails fast when the server does not trust the credentials, naming the file, never the JWT or seed" do
          stranger = NKeys::Operator.new.account("APP").user
          path = File.join(@dir, "stranger.creds")
          File.write(path, stranger.creds)
          configure_bridge(server: @server.url, credentials_file: path)
          error, took = failing_publish
          expect(error).to be_a(JetstreamBridge::AuthorizationError)
          expect(error.message).to include("credentials file #{path}")
          expect(took).to be < 2
          [stranger.jwt, stranger.pair.seed].each { |secret| expect_hidden(secret, texts_of(error)) }
        end
      end
    end

    it "rejects an unreadable or malformed credentials file, naming it" do
      NatsServer.with_server do |server|
        missing = File.join(@dir, "missing.creds")
        configure_bridge(server: server.url, credentials_file: missing)
        error, took = failing_publish
        expect(error).to be_a(JetstreamBridge::ConfigurationError)
        expect(error.message).to include("credentials_file", missing)
        expect(took).to be < 1

        # A seed with its JWT cut off: not a credentials file.
        seed = NKeys.pair(:user).seed
        broken = File.join(@dir, "broken.creds")
        File.write(broken, "-----BEGIN USER NKEY SEED-----\n#{seed}\n------END USER NKEY SEED------\n")
        configure_bridge(server: server.url, credentials_file: broken)
        error, = failing_publish
        expect(error).to be_a(JetstreamBridge::ConfigurationError)
        expect(error.message).to include(broken).and match(/not valid/)
        expect_hidden(seed, texts_of(error))
      end
    end
  end

  context "TLS" do
    before(:context) do
      @ca = TestCA.new(File.join(@dir, "ca"))
      @other_ca = TestCA.new(File.join(@dir, "other-ca"), name: "other-ca")
      @server_cert, @server_key = @ca.server_cert
      @client_cert, @client_key = @ca.client_cert
      @stranger_cert, @stranger_key = @other_ca.client_cert
      tls = "cert_file: \"#{@server_cert}\", key_file: \"#{@server_key}\", ca_file: \"#{@ca.cert}\""
      @server = NatsServer.new(config: "tls { #{tls} }").start
      @mtls = NatsServer.new(config: "tls { #{tls}, verify: true }").start
    end
    after(:context) do
      @server&.cleanup
      @mtls&.cleanup
    end

    it "connects with tls_ca_file (nats://, tls:// and nats+tls://, by IP and by name) and with NATS_TLS_CA_FILE" do
      ["nats://127.0.0.1", "tls://127.0.0.1", "nats+tls://127.0.0.1", "NATS+TLS://localhost", "nats://localhost"].each do |base|
        configure_bridge(server: "#{base}:#{@server.port}", tls_ca_file: @ca.cert)
        expect(publish_one).to be(true)
      end
      with_env("NATS_TLS_CA_FILE" => @ca.cert) do
        configure_bridge(server: @server.url)
        expect(publish_one).to be(true)
      end
    end

    it "takes nats+tls:// to mean TLS: a server that does not offer it is refused" do
      configure_bridge(server: "nats+tls://127.0.0.1:#{shared_server.port}", connect_timeout: "1s")
      error, = failing_publish
      expect(error).to be_a(JetstreamBridge::ConnectionError)
      expect(error.message).to match(/tls/i)
    end

    it "fails fast on a server certificate from an unknown CA, naming the CA file" do
      configure_bridge(server: @server.url, tls_ca_file: @other_ca.cert)
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::ConnectionError)
      expect(error.message).to match(/certificate|UnknownIssuer/i).and include("CA file #{@other_ca.cert}")
      expect(took).to be < 2
    end

    it "names a CA file that does not exist" do
      missing = File.join(@dir, "nope.pem")
      configure_bridge(server: @server.url, tls_ca_file: missing)
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::ConfigurationError)
      expect(error.message).to include("tls_ca_file #{missing}")
      expect(took).to be < 1
    end

    it "connects with a client certificate where the server verifies clients (and with the env fallbacks)" do
      configure_bridge(server: @mtls.url, tls_ca_file: @ca.cert, tls_cert_file: @client_cert, tls_key_file: @client_key)
      expect(publish_one).to be(true)
      with_env("NATS_TLS_CA_FILE" => @ca.cert, "NATS_TLS_CERT_FILE" => @client_cert, "NATS_TLS_KEY_FILE" => @client_key) do
        configure_bridge(server: @mtls.url)
        expect(publish_one).to be(true)
      end
    end

    it "fails fast without a client certificate, or with one the server's CA did not sign" do
      configure_bridge(server: @mtls.url, tls_ca_file: @ca.cert)
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::ConnectionError)
      expect(error.message).to match(/certificate/i)
      expect(took).to be < 2

      configure_bridge(server: @mtls.url, tls_ca_file: @ca.cert, tls_cert_file: @stranger_cert, tls_key_file: @stranger_key)
      error, took = failing_publish
      expect(error).to be_a(JetstreamBridge::ConnectionError)
      expect(error.message).to match(/UnknownCA|certificate/i).and include("client certificate #{@stranger_cert}")
      expect(took).to be < 2
    end

    it "requires the certificate and key together" do
      expect { configure_bridge(server: @mtls.url, tls_cert_file: @client_cert) }
        .to raise_error(JetstreamBridge::ConfigurationError, /tls_cert_file and tls_key_file/)
    end

    it "combines TLS with user/password auth" do
      password = "pw-#{SecureRandom.hex(6)}"
      tls = "cert_file: \"#{@server_cert}\", key_file: \"#{@server_key}\""
      NatsServer.with_server(config: "tls { #{tls} }\nauthorization { user: app, password: \"#{password}\" }") do |server|
        configure_bridge(server: server.url, tls_ca_file: @ca.cert, user: "app", password: password)
        expect(publish_one).to be(true)
        configure_bridge(server: server.url, tls_ca_file: @ca.cert, user: "app", password: "not-#{password}")
        error, = failing_publish
        expect(error).to be_a(JetstreamBridge::AuthorizationError)
        expect(error.message).to include("with a password", "CA file #{@ca.cert}")
      end
    end
  end

  # Each kind of secret configured for real, then connect failures, a server killed
  # (SIGKILL) and restarted while publishing and consuming (reconnects), health and
  # debug output, and a wrong secret of the same kind: everything the process printed
  # (file descriptors 1 and 2, so native output too) and every surface is searched.
  describe "secrets in everything printed" do
    include ConsumerHelpers

    # Output written to file descriptors 1 and 2 during the block.
    def capturing_output
      saved_out = $stdout.dup
      saved_err = $stderr.dup
      Tempfile.create("jsb-secrets") do |file|
        $stdout.reopen(file)
        $stderr.reopen(file)
        begin
          yield
        ensure
          $stdout.flush
          $stderr.flush
          $stdout.reopen(saved_out)
          $stderr.reopen(saved_err)
        end
        File.read(file.path)
      end
    end

    def show(label, value)
      text = value.is_a?(Exception) ? value.full_message(highlight: false) : value.inspect
      puts "#{label}: #{text}"
    end

    # The block's value (printed), or nil when it raised a bridge error (printed too).
    def attempt(label)
      value = yield
      show(label, value)
      value
    rescue JetstreamBridge::Error => e
      show(label, e)
      warn e.inspect
      nil
    end

    def show_surfaces(label)
      show("#{label} health", JetstreamBridge.health_check)
      show("#{label} debug", JetstreamBridge::DebugHelper.debug_info)
      show("#{label} config", JetstreamBridge.config)
      puts JetstreamBridge.config.to_s, JetstreamBridge.config.to_h
    end

    def configure_printing(server_url, settings)
      configure_bridge(server: server_url, request_timeout: "1s", connect_timeout: "1s", publish_attempts: 1, **settings)
      JetstreamBridge.config.logger = Logger.new($stdout, level: Logger::DEBUG)
    end

    def until_published(label)
      eventually(timeout: 20, interval: 0.2) { attempt(label) { publish_one } }
    end

    def exercise(server, settings, wrong_settings, url: server.url)
      configure_printing(url, settings)
      attempt("first publish") { publish_one }
      show_surfaces("connected")
      seen = Queue.new
      consumer = JetstreamBridge.subscribe { |event, *| seen << event["event_id"] }
      thread = start_consumer(consumer)
      attempt("incoming") { JetstreamBridge.publish(event_type: "user.created", payload: {}, subject: dest_subject) }
      show("handled", Timeout.timeout(10) { seen.pop })

      server.kill
      attempt("while killed") { publish_one }
      show_surfaces("killed")
      server.start
      until_published("after restart")
      attempt("incoming again") { JetstreamBridge.publish(event_type: "user.created", payload: {}, subject: dest_subject) }
      show("handled again", Timeout.timeout(20) { seen.pop })
      stop_consumer(consumer, thread)

      dead = NatsServer.free_ports(1, exclude: [server.port, shared_server.port]).first
      configure_printing("nats://127.0.0.1:#{dead}", settings)
      attempt("no server") { publish_one }
      show_surfaces("no server")

      configure_printing(server.url, wrong_settings)
      attempt("wrong secret") { publish_one }
      show_surfaces("wrong secret")
    ensure
      stop_consumers
      log = log_output
      puts log
    end

    def expect_secrets_hidden(output, secrets)
      expect(output).to include("first publish: true", "after restart: true", "wrong secret: ")
      secrets.each do |secret|
        at = output.index(secret)
        expect(at).to be_nil, "secret #{secret[0, 6]}... printed: ...#{output[[at.to_i - 200, 0].max, 400]}..."
      end
    end

    around do |example|
      NatsServer.with_server(config: @server_config) do |server|
        @server = server
        example.run
      end
    end

    context "password (setting and URL)" do
      before(:context) do
        @password = "pw-#{SecureRandom.hex(10)}"
        @server_config = "authorization { user: app, password: \"#{@password}\" }"
      end

      it "never prints the password or a wrong one" do
        wrong = "wrongpw-#{SecureRandom.hex(10)}"
        output = capturing_output { exercise(@server, { user: "app", password: @password }, { user: "app", password: wrong }) }
        expect_secrets_hidden(output, [@password, wrong])
      end

      it "never prints a password given in the URL" do
        wrong = "wrongpw-#{SecureRandom.hex(10)}"
        url = "nats://app:#{@password}@127.0.0.1:#{@server.port}"
        output = capturing_output { exercise(@server, {}, { user: "app", password: wrong }, url: url) }
        expect_secrets_hidden(output, [@password, wrong])
      end
    end

    context "token" do
      before(:context) do
        @token = "tok-#{SecureRandom.hex(12)}"
        @server_config = "authorization { token: \"#{@token}\" }"
      end

      it "never prints the token or a wrong one" do
        wrong = "wrongtok-#{SecureRandom.hex(10)}"
        output = capturing_output { exercise(@server, { token: @token }, { token: wrong }) }
        expect_secrets_hidden(output, [@token, wrong])
      end
    end

    context "NKey seed" do
      before(:context) do
        @user = NKeys.pair(:user)
        @server_config = "authorization { users = [ { nkey: #{@user.public_key} } ] }"
      end

      it "never prints the seed or a wrong one" do
        stranger = NKeys.pair(:user)
        output = capturing_output { exercise(@server, { nkey_seed: @user.seed }, { nkey_seed: stranger.seed }) }
        expect_secrets_hidden(output, [@user.seed, stranger.seed])
      end
    end

    context "credentials file" do
      before(:context) do
        operator = NKeys::Operator.new
        @user = operator.account("APP").user
        @server_config = NKeys.operator_config(operator, @user.account)
        @creds = File.join(@dir, "secrets.creds")
        File.write(@creds, @user.creds)
      end

      it "never prints the JWT or the seed, of the right file or a rejected one" do
        stranger = NKeys::Operator.new.account("APP").user
        stranger_creds = File.join(@dir, "secrets-stranger.creds")
        File.write(stranger_creds, stranger.creds)
        output = capturing_output do
          exercise(@server, { credentials_file: @creds }, { credentials_file: stranger_creds })
        end
        expect_secrets_hidden(output, [@user.jwt, @user.pair.seed, stranger.jwt, stranger.pair.seed])
      end
    end
  end
end
