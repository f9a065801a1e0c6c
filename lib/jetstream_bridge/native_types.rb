# frozen_string_literal: true

module JetstreamBridge
  # The values that cross between the Ruby layer and the Rust core (JetstreamBridge::Native),
  # each with named members: results the core builds, and options Ruby fills for it. Loaded
  # before the core, which looks these classes up once when it loads and checks their
  # members (their order is the core's: a member added here must be added there).
  #
  # Code in lib/ reads them by name (message.id, ack.seq), never by position: spec
  # boundary_spec.rb checks that.
  module Native
    # --- Results the core builds ---------------------------------------------------------

    # A delivered message (Consumer#next_batch). `event`: the decoded envelope (a Hash), or
    # nil with `decode_error` saying why; `msg_id`: its Nats-Msg-Id, or nil.
    Message = Struct.new(:id, :subject, :event, :deliveries, :decode_error, :msg_id, :stream_seq, keyword_init: true)

    # An event of Client#publish_events that was not published (an entry of its
    # BatchOutcome's failures): its index in the call, the error class it would have
    # raised (JetstreamBridge::PublishTimeoutError, ArgumentError...) and the message.
    Failure = Struct.new(:index, :error, :message, keyword_init: true) do
      # The class's name without JetstreamBridge:: ("PublishTimeoutError"), as
      # Publisher::BatchResult#failed and the outbox's last_error show it.
      def error_name = error.name.delete_prefix("JetstreamBridge::")
    end

    # An event published once acked: by Client#publish_event (attempts 1), or by
    # Publisher's retries (attempts they took).
    Published = Struct.new(:stream, :seq, :duplicate, :event_id, :subject, :attempts, keyword_init: true)

    # Client#publish_events: every event's id in order, how many the server had already
    # (duplicates), and the Failures (the events not named there were acked).
    BatchOutcome = Struct.new(:event_ids, :duplicates, :failures, keyword_init: true) do
      # The Failure of each event by its index.
      def failures_by_index = failures.to_h { |failure| [failure.index, failure] }
    end

    # An event built, not sent yet (Native.build_event, Event.build, an outbox row, a dead
    # letter to replay; a failed publish's Error#unsent_event): what Client#publish_event
    # and #publish_events send as it is. `headers`: custom NATS headers, or nil.
    BuiltEvent = Struct.new(:subject, :event_id, :json, :headers, keyword_init: true)

    # Native.build_envelope: the event id (generated when none was given) and the JSON.
    Envelope = Struct.new(:event_id, :json, keyword_init: true)

    # A message stored in a stream (Client#stream_message): its headers ({name => value},
    # read by the core as a consumer reads them), the body as a binary String, stored_at
    # ISO-8601.
    StoredMessage = Struct.new(:seq, :subject, :headers, :body, :stored_at, keyword_init: true)

    # What the connection recorded (reconnects, disconnects, provisioning...): level
    # ("info", "warn", "error"), kind, redacted message, when (ISO-8601).
    ConnectionEvent = Struct.new(:level, :kind, :message, :at, keyword_init: true)

    # Client#drain_events: the ConnectionEvents queued, and how many were dropped.
    DrainedEvents = Struct.new(:events, :dropped, keyword_init: true)

    # Client#ensure_consumer: "created", "updated" or "unchanged", and what changed.
    DurableReport = Struct.new(:action, :changes, keyword_init: true)

    # --- Options Ruby fills for the core ---------------------------------------------------

    # Client.connect (Config#connect_options); durations in milliseconds, nil: not set.
    ConnectOptions = Struct.new(:urls, :name, :user, :password, :token, :nkey_seed, :credentials_file, :tls_ca_file,
                                :tls_cert_file, :tls_key_file, :connect_timeout_ms, :request_timeout_ms, :stream, :api,
                                keyword_init: true) do
      # Secrets masked (a logged or raised options object must not show them).
      def inspect
        shown = each_pair.map { |name, value| "#{name}=#{CONNECT_SECRETS.include?(name) && value ? '[REDACTED]' : value.inspect}" }
        "#<struct #{self.class.name} #{shown.join(', ')}>"
      end
      alias_method :to_s, :inspect
    end

    CONNECT_SECRETS = %i[password token nkey_seed].freeze

    # The stream the bridge needs (Config#stream_spec; Client#ensure_stream, LoopOptions);
    # retention is what a stream the bridge creates gets ("limits" or "workqueue").
    StreamSpec = Struct.new(:name, :subjects, :duplicate_window_ms, :replicas, :retention, :limits, keyword_init: true)

    # What Client#ensure_stream does with the stream: provision it keeping an existing
    # stream's limits (an app process), applying them (refused when that would delete
    # stored messages), applying them deleting (confirmed), only verify it, or nothing.
    TOPOLOGY_HOWS = %i[keep apply apply_deleting verify unverified].freeze

    # The stream limits the bridge manages (Config#stream_limits): nil where unmanaged.
    StreamLimits = Struct.new(:max_age_ms, :max_bytes, :max_msgs, keyword_init: true)

    # Client#pull_loop and #ensure_consumer (Consumer#loop_options): the durable, the pull
    # loop, and the stream to make again when it is missing (stream_spec, Config#stream_spec;
    # nil: never). consumer_mode: a Symbol of CONSUMER_MODES; with :push, the durable's
    # delivery_subject and deliver_group (nil with :pull).
    LoopOptions = Struct.new(:stream, :durable, :filter_subject, :ack_wait_ms, :max_deliver, :max_ack_pending, :batch_size,
                             :dlq_subject, :stream_spec, :provision, :max_handler_time_ms, :verify, :concurrency,
                             :consumer_mode, :delivery_subject, :deliver_group, keyword_init: true)

    # How a consumer gets its messages: it pulls them ($JS.API.CONSUMER.MSG.NEXT), or a push
    # durable sends them to its delivery subject.
    CONSUMER_MODES = %i[pull push].freeze

    # What the core fills in for what publish arguments leave out (Native.build_event,
    # Client#publish_event, #publish_events; Config#event_defaults): the publish subject,
    # the producer (app_name), and the JSON style (nil: Ruby must build every event).
    EventDefaults = Struct.new(:subject, :producer, :json_style, keyword_init: true)

    # Whose JSON the core writes (Native.encode_json, build_event, publish_event): the JSON
    # gem's JSON.generate, ActiveSupport's, or ActiveSupport's escaping HTML entities.
    JSON_STYLES = %i[json_gem active_support active_support_html_safe].freeze
  end
end
