# frozen_string_literal: true

require "logger"

module JetstreamBridge
  # Every setting, with its default. Durations are given as "30s", "500ms", "1m" or a
  # number of seconds and parsed once by the core; `validate!` reports every problem.
  class Config
    SECRET_SETTINGS = %i[password token nkey_seed].freeze

    SETTINGS = {
      # NATS server URL(s), comma-separated for a cluster; credentials in URLs are redacted.
      nats_urls: -> { ENV["NATS_URLS"] || ENV["NATS_URL"] || "nats://localhost:4222" },
      # Environment namespace for the stream and subjects (subject_layout :env; unused under :app).
      env: -> { ENV["NATS_ENV"] || ENV["RAILS_ENV"] || ENV["RACK_ENV"] || "development" },
      # Which names the bridge uses: :env, the v3 layout ({env}.{app_name}.sync.{destination_app},
      # stream {env}-jetstream-bridge-stream), or :app, the pure-Ruby gem's since 4.5
      # ({app_name}.sync.{destination_app}, stream jetstream-bridge-stream, no env in any name).
      # Only ever what is set here: never inferred from env. "env"/"app" Strings are taken too.
      subject_layout: -> { :env },
      # This application's name (a subject token).
      app_name: -> { ENV["APP_NAME"] },
      # The application exchanged with (a subject token).
      destination_app: -> { ENV["DESTINATION_APP"] },
      # Transactional outbox: publish writes a row first, sent after commit.
      use_outbox: -> { false },
      # When the outbox publishes a committed row: :inline (publish waits for the ack) or :background (a per-process thread).
      outbox_delivery: -> { :inline },
      # Idempotent inbox: each event is handled once.
      use_inbox: -> { false },
      # Dead-letter queue for poison messages on {env}.sync.dlq ({app_name}.sync.dlq under :app).
      use_dlq: -> { false },
      # Delivery attempts before a message goes to the DLQ.
      max_deliver: -> { 5 },
      # Time the server waits for an ack before redelivering.
      ack_wait: -> { "30s" },
      # Delay before each redelivery after a handler failure; the last entry repeats. Applied
      # by the bridge (NAK delay), never sent to the server: entries past max_deliver - 1
      # are simply unused, so NATS 2.9's limit on backoff length does not apply.
      backoff: -> { %w[1s 5s 15s] },
      # How long a handler may run before it counts as stuck: its message is then no longer
      # kept alive (the server delivers it again after ack_wait, to another worker) and
      # `handler_stuck` is logged.
      max_handler_time: -> { "30m" },
      # Messages fetched per pull request.
      batch_size: -> { 25 },
      # Handler threads per consumer (1: handlers run on the thread calling run!); events
      # with the same resource_type + resource_id stay in order (see Consumer::Pool).
      concurrency: -> { 1 },
      # How consumers get messages: :pull, or :push (a push durable sends them; no $JS.API needed).
      consumer_mode: -> { :pull },
      # The push durable's delivery subject; nil: "{subscribe subject}.{durable}" (".worker" for :app's own durable).
      delivery_subject: -> { nil },
      # The push durable's deliver group, shared by the consumer processes; nil: the durable's name.
      push_consumer_group: -> { nil },
      # Window in which the server drops a repeated Nats-Msg-Id.
      duplicate_window: -> { "2m" },
      # Stream replicas: 1 for a single server, 3 for a cluster.
      stream_replicas: -> { 1 },
      # Oldest message the stream keeps (a duration like "7d"); nil: no limit. Past any
      # stream limit the oldest messages, events and dead letters alike, are discarded.
      stream_max_age: -> { nil },
      # Bytes the stream keeps at most: an Integer or a size like "10GB" (1 GB = 1024^3
      # bytes); nil: no limit.
      stream_max_bytes: -> { nil },
      # Messages the stream keeps at most; nil: no limit.
      stream_max_msgs: -> { nil },
      # Create/extend the stream on first connection (off when an operator provisions it).
      auto_provision: -> { true },
      # Check (info calls) that the stream and durable exist when auto_provision is off.
      # false: no stream or consumer API call at all (a least-privilege account that may
      # only publish, pull and ack; provision with `rake jetstream_bridge:provision`).
      verify_topology: -> { true },
      # The stream's name; nil: "{env}-jetstream-bridge-stream" ("jetstream-bridge-stream" under :app).
      stream_name: -> { nil },
      # Bound on one connection attempt to a server.
      connect_timeout: -> { "5s" },
      # Bound on a publish ack and on each JetStream API request.
      request_timeout: -> { "5s" },
      # Publish retry strategy: :exponential, :linear, or an object with #delay_for(attempt, error).
      retry_strategy: -> { :exponential },
      # Publish attempts in all (1 = no retry).
      publish_attempts: -> { 3 },
      # Publish acks kept in flight by publish_batch.
      publish_batch_window: -> { 256 },
      # Handler errors sent to the DLQ at once instead of being retried.
      unrecoverable_errors: -> { [ArgumentError, TypeError] },
      # Whether the generated health endpoint (GET /health/jetstream) shows health_check
      # whole (NATS hosts, stream, subjects, counts, version); off: only status and healthy.
      health_details: -> { false },
      # How long a consumer worker of `rake jetstream_bridge:consume PROCESSES=n`, once
      # stopping (SIGTERM, or its parent gone), waits for its handlers in flight; then it
      # gives back the messages it holds and exits with status 1 anyway.
      shutdown_timeout: -> { "10s" },
      # health_check is unhealthy (the health endpoint answers 503) when the oldest unsent
      # outbox row is older than this (a duration); nil: the backlog does not count.
      health_outbox_max_age: -> { nil },
      # Failed sends after which an outbox row is dead (no longer retried); NATS being
      # unreachable never makes a row dead.
      outbox_max_attempts: -> { 10 },
      # Middleware around every consumer's handler: config.consumer_middleware.use(Klass, *args).
      consumer_middleware: -> { Middleware.new },
      # Called as on_error.call(error, context) for every handler failure (context: the
      # MessageContext) and background failure (context: a Hash); nil: Rails.error when it
      # exists (Rails 7+), else only the log.
      on_error: -> { nil },
      # ActiveRecord model of the outbox table.
      outbox_model: -> { "JetstreamBridge::OutboxEvent" },
      # ActiveRecord model of the inbox table.
      inbox_model: -> { "JetstreamBridge::InboxEvent" },
      # Where the bridge logs (Rails.logger under Rails).
      logger: -> { (::Rails.logger if defined?(::Rails) && ::Rails.respond_to?(:logger)) || Logger.new($stderr, progname: "jetstream_bridge", level: Logger::INFO) },
      # Connection name shown by the server (defaults to app_name).
      connection_name: -> { nil },
      # User name for user/password authentication.
      user: -> { ENV["NATS_USER"] },
      # Password for user/password authentication (never logged).
      password: -> { ENV["NATS_PASSWORD"] },
      # Token authentication (never logged).
      token: -> { ENV["NATS_TOKEN"] },
      # NKey seed authentication (never logged).
      nkey_seed: -> { ENV["NATS_NKEY_SEED"] },
      # Credentials file (JWT + seed) for decentralized auth.
      credentials_file: -> { ENV["NATS_CREDENTIALS"] },
      # CA certificate file for TLS.
      tls_ca_file: -> { ENV["NATS_TLS_CA_FILE"] },
      # Client certificate for mutual TLS.
      tls_cert_file: -> { ENV["NATS_TLS_CERT_FILE"] },
      # Client key for mutual TLS.
      tls_key_file: -> { ENV["NATS_TLS_KEY_FILE"] }
    }.freeze

    attr_reader(*SETTINGS.keys)

    # Writers forget that the settings were validated (validate_once!).
    SETTINGS.each_key do |name|
      define_method("#{name}=") do |value|
        @valid = false
        instance_variable_set("@#{name}", value)
      end
    end

    def initialize
      SETTINGS.each { |name, default| public_send("#{name}=", default.call) }
    end

    # A copy for a configure call to change: String, Array and Hash settings are copied
    # too, so changing one in place (config.backoff << "1m") leaves the source untouched.
    def initialize_copy(source)
      super
      SETTINGS.each_key do |name|
        value = setting(name)
        public_send("#{name}=", value.dup) if [String, Array, Hash, Middleware].any? { |type| value.is_a?(type) }
      end
    end

    # Takes every setting of another config (one a configure call built and validated).
    def replace_settings(other)
      SETTINGS.each_key { |name| public_send("#{name}=", other.setting(name)) }
      self
    end

    # Applies a Hash of settings; an unknown key raises ArgumentError naming it.
    def assign(settings)
      settings.each do |key, value|
        name = key.to_sym
        raise ArgumentError, "unknown JetstreamBridge setting: #{key.inspect}" unless SETTINGS.key?(name)

        public_send("#{name}=", value)
      end
      self
    end

    # The values subject_layout takes.
    SUBJECT_LAYOUTS = %i[env app].freeze
    # The values outbox_delivery takes.
    OUTBOX_DELIVERIES = [:inline, :background, "inline", "background"].freeze

    # Every problem with the settings at once, or nothing.
    def errors
      problems = []
      problems << "subject_layout must be :env or :app, got #{subject_layout.inspect}" unless layout
      (layout == :app ? %i[app_name destination_app] : %i[env app_name destination_app]).each do |name|
        value = public_send(name)
        if value.nil? || value.to_s.strip.empty?
          problems << "#{name} is required#{" (or set #{name.to_s.upcase})" if name != :env}"
          next
        end
        begin
          Native.validate_token(name.to_s, value.to_s)
        rescue ConfigurationError => e
          problems << e.message
        end
      end
      problems.concat(name_errors) if problems.empty?
      problems << "nats_urls is empty" if urls.empty?
      urls.each do |url|
        problems << "nats_urls has a URL without nats://, nats+tls://, tls:// or ws:// scheme: #{redact(url)}" unless url.match?(%r{\A(nats|nats\+tls|tls|ws|wss)://}i)
      end
      %i[max_deliver batch_size concurrency stream_replicas publish_attempts publish_batch_window outbox_max_attempts].each do |name|
        value = public_send(name)
        problems << "#{name} must be a positive Integer, got #{value.inspect}" unless value.is_a?(Integer) && value.positive?
      end
      problems.concat(duration_errors)
      %i[auto_provision verify_topology health_details].each do |name|
        problems << "#{name} must be true or false, got #{public_send(name).inspect}" unless [true, false].include?(public_send(name))
      end
      problems << "verify_topology false needs auto_provision false (provisioning uses the JetStream API); provision with rake jetstream_bridge:provision" if verify_topology == false && auto_provision
      problems.concat(stream_name_errors)
      problems.concat(push_errors)
      problems << "outbox_delivery must be :inline or :background, got #{outbox_delivery.inspect}" unless OUTBOX_DELIVERIES.include?(outbox_delivery)
      problems.concat(stream_limit_errors)
      problems.concat(unrecoverable_errors_problems)
      problems << "on_error must respond to #call(error, context), got #{on_error.class}" unless on_error.nil? || on_error.respond_to?(:call)
      problems << "consumer_middleware must be a JetstreamBridge::Middleware (add entries with .use), got #{consumer_middleware.class}" unless consumer_middleware.is_a?(Middleware)
      problems << "retry_strategy must be :exponential, :linear or respond to #delay_for(attempt, error)" unless RetryStrategy.valid?(retry_strategy)
      problems << "user is set without password (or password without user)" if user.to_s.empty? != password.to_s.empty?
      problems << "tls_cert_file and tls_key_file must be set together" if tls_cert_file.to_s.empty? != tls_key_file.to_s.empty?
      # Checked here: the NATS client would only say "failed signing nonce" at connect.
      problems << "nkey_seed is not an NKey user seed (58 characters starting with \"SU\"; value not shown)" unless nkey_seed.to_s.empty? || nkey_seed.to_s.match?(/\ASU[A-Z2-7]{56}\z/)
      problems
    end

    # Raises ConfigurationError listing every problem.
    def validate!
      problems = errors
      return (@valid = true) if problems.empty?

      klass = problems.all? { |p| missing?(p) } ? MissingConfigurationError : ConfigurationError
      raise klass, "invalid JetstreamBridge configuration:\n  - #{problems.join("\n  - ")}"
    end

    # What configure checks: every value given is usable. Required settings may still be
    # missing (another configure call may set them; first use checks).
    def validate_values!
      problems = errors.reject { |p| missing?(p) }
      return true if problems.empty?

      raise ConfigurationError, "invalid JetstreamBridge configuration:\n  - #{problems.join("\n  - ")}"
    end

    # validate!, once until a setting changes: what publish calls every time.
    def validate_once!
      @valid || validate!
    end

    # nats_urls as a list.
    def urls
      Array(nats_urls).flat_map { |u| u.to_s.split(",") }.map(&:strip).reject(&:empty?)
    end

    # Multipliers of the size units stream_max_bytes accepts (binary: 1 KB = 1024 bytes).
    SIZE_UNITS = { "" => 1, "b" => 1, "kb" => 1024, "kib" => 1024, "mb" => 1024**2, "mib" => 1024**2,
                   "gb" => 1024**3, "gib" => 1024**3, "tb" => 1024**4, "tib" => 1024**4 }.freeze

    # The stream limits the bridge manages, for the core (a Native::StreamLimits): nil
    # where unset (an existing stream's value is left alone; a new stream has no limit there).
    def stream_limits
      Native::StreamLimits.new(max_age_ms: stream_max_age.nil? ? nil : duration_ms(:stream_max_age, stream_max_age),
                               max_bytes: stream_max_bytes_value, max_msgs: stream_max_msgs)
    end

    # health_outbox_max_age in seconds, or nil.
    def health_outbox_max_age_seconds
      health_outbox_max_age.nil? ? nil : duration_ms(:health_outbox_max_age, health_outbox_max_age) / 1000.0
    end

    # stream_max_bytes in bytes, or nil.
    def stream_max_bytes_value
      value = stream_max_bytes
      return value if value.nil? || (value.is_a?(Integer) && value.positive?)

      size = value.strip.match(/\A(\d+(?:\.\d+)?)\s*([a-z]*)\z/i) if value.is_a?(String)
      factor = size && SIZE_UNITS[size[2].downcase]
      bytes = (Float(size[1]) * factor).round if factor
      return bytes if bytes&.positive?

      raise ConfigurationError, "stream_max_bytes must be a positive number of bytes or a size like \"10GB\", got #{value.inspect}"
    end

    def ack_wait_ms = duration_ms(:ack_wait, ack_wait)
    def max_handler_time_ms = duration_ms(:max_handler_time, max_handler_time)
    def duplicate_window_ms = duration_ms(:duplicate_window, duplicate_window)
    def connect_timeout_ms = duration_ms(:connect_timeout, connect_timeout)
    def request_timeout_ms = duration_ms(:request_timeout, request_timeout)
    def shutdown_timeout_ms = duration_ms(:shutdown_timeout, shutdown_timeout)

    def backoff_ms
      raise ConfigurationError, "backoff must be an Array of durations, got #{backoff.inspect}" unless backoff.is_a?(Array)

      backoff.each_with_index.map { |d, i| duration_ms("backoff[#{i}]", d) }
    end

    # subject_layout as a Symbol of SUBJECT_LAYOUTS (:env, :app), nil when it is neither.
    def layout
      value = subject_layout
      value = value.to_sym if value.is_a?(String)
      value if SUBJECT_LAYOUTS.include?(value)
    end

    # Names derived from subject_layout, env, app_name and destination_app (see the
    # README), with the retention a stream the bridge creates gets; recomputed only when
    # one of those changes (publish reads them on every call).
    def names
      key = @names_key
      return @names if key && key[0] == subject_layout && key[1] == env && key[2] == app_name && key[3] == destination_app

      # Copies, so a String changed in place is noticed too.
      key = [subject_layout, env, app_name, destination_app].map { |value| value.is_a?(String) ? value.dup.freeze : value }
      @names = Native.names(*name_args).freeze
      @names_key = key
      @names
    end

    # The stream's name: stream_name when set, else the layout's (names["stream"]).
    def stream_name
      custom = @stream_name.to_s.strip
      custom.empty? ? names["stream"] : custom
    end

    # The subjects the bridge's stream must cover: publish, subscribe and, with use_dlq, the DLQ.
    def stream_subjects
      [source_subject, destination_subject, (dlq_subject if use_dlq)].compact
    end

    # The stream the bridge needs, as the core takes it (Native::Client#ensure_stream, a
    # consumer's loop options): a Native::StreamSpec.
    def stream_spec
      Native::StreamSpec.new(name: stream_name, subjects: stream_subjects, duplicate_window_ms: duplicate_window_ms,
                             replicas: stream_replicas, retention: names["retention"], limits: stream_limits)
    end

    # Whether committed outbox rows are published by the process's delivery thread (outbox_delivery :background).
    def background_outbox? = outbox_delivery.to_s == "background"

    # Whether consumers use push durables (consumer_mode :push).
    def push_consumer? = consumer_mode.to_s == "push"

    # The delivery subject of the push durable named `durable`: delivery_subject, else
    # derived from the durable, so that two durables never share one (each would be
    # delivered the other's messages). Under subject_layout :app the configured durable's
    # is the pure-Ruby gem 7.x's default, so a push durable that gem made goes on as it was.
    def delivery_subject_for(durable)
      return presence(delivery_subject) if presence(delivery_subject)
      return "#{destination_subject}.worker" if layout == :app && durable.to_s == durable_name

      "#{destination_subject}.#{durable}"
    end

    # The deliver group of the push durable named `durable`.
    def deliver_group_for(durable) = presence(push_consumer_group) || durable.to_s

    # A setting's value as given (stream_name's reader derives one when it is nil).
    def setting(name) = instance_variable_get("@#{name}")
    def source_subject = names["publish_subject"]
    def destination_subject = names["subscribe_subject"]
    def dlq_subject = names["dlq_subject"]
    def durable_name = names["durable"]

    # What the core fills in for what an event's publish arguments leave out
    # (Native::EventDefaults), for the JSON style in use (Event.native_json_style); kept
    # until the publish subject, app_name or the style changes.
    def event_defaults(json_style)
      subject = source_subject
      cached = @event_defaults
      if cached&.subject.equal?(subject) && cached.json_style == json_style && cached.producer == app_name.to_s
        return cached
      end

      @event_defaults = Native::EventDefaults.new(subject: subject, producer: app_name.to_s.dup.freeze, json_style: json_style).freeze
    end

    # Options for Native::Client.connect.
    def connect_options
      Native::ConnectOptions.new(
        urls: urls, name: (connection_name || app_name || "jetstream_bridge").to_s,
        user: presence(user), password: presence(password), token: presence(token),
        nkey_seed: presence(nkey_seed), credentials_file: presence(credentials_file),
        tls_ca_file: presence(tls_ca_file), tls_cert_file: presence(tls_cert_file),
        tls_key_file: presence(tls_key_file),
        connect_timeout_ms: connect_timeout_ms, request_timeout_ms: request_timeout_ms,
        stream: stream_name, api: verify_topology != false
      )
    end

    # Settings safe to show (health_check, debug): secrets masked, URLs redacted.
    def to_h
      SETTINGS.keys.each_with_object({}) do |name, h|
        value = setting(name)
        h[name] =
          if SECRET_SETTINGS.include?(name) then value.nil? ? nil : "[REDACTED]"
          elsif name == :nats_urls then urls.map { |u| redact(u) }.join(",")
          elsif name == :logger || name == :on_error then value&.class&.name
          elsif name == :consumer_middleware then value.is_a?(Middleware) ? value.entries.map { |e| e.klass.name } : value.class.name
          else value
          end
      end
    end

    def inspect
      "#<#{self.class.name} #{to_h.map { |k, v| "#{k}=#{v.inspect}" }.join(' ')}>"
    end
    alias to_s inspect

    private

    # What only the names made of the tokens show (a token that makes subjects system
    # subjects).
    def name_errors
      Native.names(*name_args)
      []
    rescue ConfigurationError => e
      [e.message]
    end

    # Native.names' arguments (under :app env is not read, so it may be anything, nil too).
    def name_args
      [(layout || subject_layout).to_s, env.to_s, app_name.to_s, destination_app.to_s]
    end

    # Rescued by class (`rescue *unrecoverable_errors`): anything else would raise TypeError
    # inside the consumer at the first handler failure.
    def unrecoverable_errors_problems
      entries = Array(unrecoverable_errors)
      bad = entries.reject { |e| e.is_a?(Class) && e <= Exception }
      return [] if bad.empty?

      ["unrecoverable_errors must be exception classes (e.g. ActiveRecord::RecordInvalid, not a String), got #{bad.map(&:inspect).join(', ')}"]
    end

    def duration_errors
      %i[ack_wait max_handler_time duplicate_window connect_timeout request_timeout shutdown_timeout].filter_map do |name|
        duration_ms(name, public_send(name))
        nil
      rescue ConfigurationError => e
        e.message
      end + backoff_errors
    end

    def stream_name_errors
      return [] if @stream_name.to_s.strip.empty?

      Native.validate_token("stream_name", @stream_name.to_s.strip)
      []
    rescue ConfigurationError => e
      [e.message]
    end

    # consumer_mode, and the push settings given: a subject the server can deliver to (no
    # wildcard, not a system subject, not one the stream stores: the server refuses such a
    # durable, and nothing would say so with verify_topology off) and a group name.
    def push_errors
      problems = []
      problems << "consumer_mode must be :pull or :push, got #{consumer_mode.inspect}" unless [:pull, :push, "pull", "push"].include?(consumer_mode)
      subject = delivery_subject
      unless subject.nil?
        begin
          Native.validate_subject(subject.to_s)
          problems << "delivery_subject #{subject} is a subject of the stream: it would store every delivery again" if stream_subject?(subject.to_s)
        rescue ArgumentError, ConfigurationError => e
          problems << "delivery_subject: #{e.message}"
        end
      end
      begin
        Native.validate_token("push_consumer_group", push_consumer_group.to_s) unless push_consumer_group.nil?
      rescue ConfigurationError => e
        problems << e.message
      end
      problems
    end

    def stream_subject?(subject)
      stream_subjects.include?(subject)
    rescue ConfigurationError
      false # the names themselves are wrong: reported on their own
    end

    def stream_limit_errors
      problems = []
      begin
        health_outbox_max_age_seconds
      rescue ConfigurationError => e
        problems << e.message
      end
      problems << "stream_max_msgs must be a positive Integer or nil, got #{stream_max_msgs.inspect}" unless stream_max_msgs.nil? || (stream_max_msgs.is_a?(Integer) && stream_max_msgs.positive?)
      begin
        stream_limits
      rescue ConfigurationError => e
        problems << e.message
      end
      problems
    end

    def backoff_errors
      backoff_ms
      []
    rescue ConfigurationError => e
      [e.message]
    end

    def duration_ms(name, value)
      Native.duration_ms(value, name.to_s)
    end

    def missing?(problem) = problem.include?(" is required")

    def presence(value)
      value.nil? || value.to_s.empty? ? nil : value.to_s
    end

    # One nats_urls entry with its user info masked, with or without a scheme, up to its
    # LAST '@' ("deploy:K9x@tail@host:4222" -> "[REDACTED]@host:4222"); then the secrets
    # the core knows.
    def redact(url)
      Native.redact(Native.redact_url(url.to_s))
    end
  end
end
