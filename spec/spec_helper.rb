# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))

require "securerandom"
require "stringio"
require "logger"
require_relative "support/nats_server"
require_relative "support/nats_api"
require "jetstream_bridge"

# Helpers shared by the specs: one real nats-server for the whole run (specs that stop or
# kill a server start their own), and a fresh bridge configuration per example on a unique
# env, so every example gets its own stream.
module BridgeHelpers
  def self.shared_server
    @shared_server ||= NatsServer.new.tap(&:start)
  end

  def shared_server
    BridgeHelpers.shared_server
  end

  # Sends `body` as it is (not an envelope the bridge built) over the bridge's connection,
  # with Nats-Msg-Id `msg_id` and `headers`; the Native::Published.
  def publish_as_is(subject, body, msg_id, headers: nil)
    event = JetstreamBridge::Native::BuiltEvent.new(subject: subject, event_id: msg_id, json: body, headers: headers)
    JetstreamBridge::Connection.client.publish_event(event, JetstreamBridge::Event.defaults(JetstreamBridge.config))
  end

  # A stream of `name` over `subjects` as the core provisions it under the :env layout (a
  # 2-minute duplicate window, one replica, limits retention, no limits).
  def stream_spec_of(name, subjects)
    JetstreamBridge::Native::StreamSpec.new(name: name, subjects: subjects, duplicate_window_ms: 120_000, replicas: 1,
                                            retention: "limits", limits: JetstreamBridge::Native::StreamLimits.new)
  end

  # Output the bridge logged during the example.
  def log_output
    @log_io&.string.to_s
  end

  def configure_bridge(server: shared_server, **settings)
    JetstreamBridge.reset!
    @log_io = StringIO.new
    @bridge_env = settings.delete(:env) || "t#{SecureRandom.hex(4)}"
    JetstreamBridge.configure do |c|
      c.nats_urls = server.is_a?(String) ? server : server.url
      c.env = @bridge_env
      c.app_name = "app"
      c.destination_app = "other"
      c.logger = Logger.new(@log_io, level: Logger::DEBUG)
      settings.each { |k, v| c.public_send("#{k}=", v) }
    end
  end

  attr_reader :bridge_env

  def native_client
    JetstreamBridge::Connection.client
  end

  # Reads back every message of a stream: [[subject, body, headers], ...].
  def stream_messages(stream = JetstreamBridge.config.stream_name)
    info = JSON.parse(native_client.stream_info(stream))
    first, last, count = info["state"].values_at("first_seq", "last_seq", "messages")
    return [] if count.zero?

    url = JetstreamBridge.config.urls.first
    (first..last).filter_map { |seq| NatsApi.get_message(url, stream, seq) }
  end

  # Seconds the block took.
  def elapsed
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    yield
    Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  end

  # Runs the block in a signal handler (trap context, where Ruby forbids taking a Mutex)
  # and returns what it returned, or the exception it raised.
  def in_signal_handler(&block)
    outcome = nil
    previous = trap("USR2") do
      outcome = begin
        [block.call]
      rescue Exception => e # rubocop:disable Lint/RescueException
        [e]
      end
    end
    Process.kill("USR2", Process.pid)
    eventually { outcome }
    outcome.first
  ensure
    trap("USR2", previous || "DEFAULT")
  end

  # Polls until the block is truthy, or fails after `timeout` seconds.
  def eventually(timeout: 10, interval: 0.05)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      result = yield
      return result if result
      raise "condition not met within #{timeout}s" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep interval
    end
  end
end

# A nats-server of the example's own (@server), for examples that stop, kill or restart it.
RSpec.shared_context "with its own nats-server" do
  around do |example|
    @server = NatsServer.new.start
    example.run
  ensure
    JetstreamBridge.reset!
    @server.cleanup
  end
end

RSpec.configure do |config|
  config.include BridgeHelpers
  config.example_status_persistence_file_path = ENV.fetch("JSB_RSPEC_STATUS", ".rspec_status") # one per rake spec worker
  config.disable_monkey_patching!
  config.order = :random
  config.after { JetstreamBridge.reset! }
end
