# frozen_string_literal: true

require_relative "jetstream_bridge/version"
require_relative "jetstream_bridge/errors"
require_relative "jetstream_bridge/background"
require_relative "jetstream_bridge/native"
require_relative "jetstream_bridge/instrumentation"
require_relative "jetstream_bridge/error_reporter"
require_relative "jetstream_bridge/headers"
require_relative "jetstream_bridge/middleware"
require_relative "jetstream_bridge/message_context"
require_relative "jetstream_bridge/delivered_event"
require_relative "jetstream_bridge/retry_strategy"
require_relative "jetstream_bridge/config"
require_relative "jetstream_bridge/connection"
require_relative "jetstream_bridge/process_state"
require_relative "jetstream_bridge/event"
require_relative "jetstream_bridge/publisher"
require_relative "jetstream_bridge/signals"
require_relative "jetstream_bridge/consumer"
require_relative "jetstream_bridge/health"
require_relative "jetstream_bridge/debug_helper"
require_relative "jetstream_bridge/outbox"
require_relative "jetstream_bridge/outbox_relay"
require_relative "jetstream_bridge/inbox"
require_relative "jetstream_bridge/dead_letters"
require_relative "jetstream_bridge/liveness"
require_relative "jetstream_bridge/supervisor"
require_relative "jetstream_bridge/railtie" if defined?(Rails::Railtie)

# Production-safe event bridge over NATS JetStream. See README.md for the API.
# Requiring the gem connects to nothing: the connection is made on first use.
module JetstreamBridge
  # The outbox and inbox tables' models (README), loaded when first named: in a console,
  # `bin/rails runner` or a script as much as by the outbox and inbox. Requiring the gem
  # loads neither them nor ActiveRecord (which stays optional; they require it).
  autoload :OutboxEvent, File.expand_path("jetstream_bridge/models", __dir__)
  autoload :InboxEvent, File.expand_path("jetstream_bridge/models", __dir__)
  # The dashboard (a Rack app: `mount JetstreamBridge::Web => "/jetstream"`), loaded when
  # first named, with Rack.
  autoload :Web, File.expand_path("jetstream_bridge/web", __dir__)

  # The settings live here, not in ProcessState: they are the app's, which a forked child
  # keeps (an app configures itself once, before Puma or the supervisor forks its workers).
  @config = nil
  @config_mutex = Mutex.new

  class << self
    # The current configuration (built from the environment on first access).
    def config
      @config || @config_mutex.synchronize { @config ||= Config.new }
    end

    # configure { |c| ... } or configure(hash), as many calls as the app likes (an
    # initializer, then an environment file): they compose. A bad value raises
    # ConfigurationError at once, naming it; a required setting still missing
    # (app_name, destination_app) raises at first use (connect, publish, subscribe,
    # ensure_topology!) or from validate!, since a later call may still set it.
    def configure(settings = nil)
      # All or nothing: the call changes a copy, which becomes the live settings only once
      # its values are valid, so a call that raises half-way leaves the previous settings.
      draft = config.dup
      draft.assign(settings) if settings
      yield draft if block_given?
      draft.validate_values!
      config.replace_settings(draft)
    end

    # Back to a process that has not used the bridge yet, for a test's `before` or a console:
    # every part of ProcessState fresh (consumers running here stopped, see Running#stop_all;
    # the outbox marks queued written; the connection closed; cached columns and health
    # figures forgotten; the outbox's pause lifted) and the settings back to their defaults.
    # What the app registered stays: Testing's mode (set once in a test helper, it holds
    # for every example that resets), instrumenter subscriptions and Handling's wrappers.
    def reset!
      ProcessState.current.reset!
      @config_mutex.synchronize { @config = nil }
    end

    # Publishes one event; true on success, raises on failure (see Publisher).
    def publish(event = nil, **fields)
      Publisher::DEFAULT.publish_arguments(Publisher.arguments(event, fields))
    end

    # Publishes many events with acks in flight; returns a Publisher::BatchResult.
    def publish_batch(events, **options)
      Publisher::DEFAULT.publish_batch(events, **options)
    end

    # A consumer for the block or handler object; with run: true, a Thread running it.
    # concurrency: handler threads; partition_by: the key whose events stay in order.
    def subscribe(handler = nil, run: false, durable_name: nil, batch_size: nil, concurrency: nil, partition_by: nil, &block)
      consumer = Consumer.new(handler, durable_name: durable_name, batch_size: batch_size, concurrency: concurrency,
                                       partition_by: partition_by, &block)
      return consumer unless run

      Background.thread("consumer", report: true) { consumer.run! }
    end

    def connected?
      Connection.connected?
    end

    # Connects if needed and ensures the stream; returns the provisioning report.
    def ensure_topology!
      Connection.ensure_topology!
    end

    # Creates or updates the stream and the durable consumer as auto_provision would,
    # whatever auto_provision and verify_topology say, and applies the configured stream
    # limits to an existing stream (which nothing else does): `rake jetstream_bridge:provision`,
    # run with an account allowed to manage them (the app's own may then only publish,
    # pull and ack). Limits that would delete stored messages raise TopologyError saying
    # how many, changing nothing, unless confirm: true. Returns { stream: report, consumer: [action, changes] }.
    def provision!(durable_name: nil, confirm: false)
      { stream: Connection.provision_stream!(confirm: confirm),
        consumer: Consumer.new(->(*) {}, durable_name: durable_name).provision_durable! }
    end

    def health_check
      Health.check
    end
  end
end
