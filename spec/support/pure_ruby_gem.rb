# frozen_string_literal: true

require "json"
require "securerandom"
require "time"
require_relative "nats_api"
require_relative "raw_jetstream"

# What an app on the pure-Ruby jetstream_bridge 7.1 (7.1.3, with nats-pure 2.5) sends to
# the server, request for request, over raw sockets (no dependency on the gem under test):
# its names, its provisioning (lib/jetstream_bridge/topology/stream.rb, overlap_guard.rb,
# consumer/subscription_manager.rb), its publish (publisher/publisher.rb) and its pull
# consumer, each configured with that gem's defaults (use_dlq true, max_deliver 5,
# ack_wait "30s", backoff 1s 5s 15s 30s 60s, stream "jetstream-bridge-stream").
#
#   app = PureRubyGem::App.new(url, app_name: "billing", destination_app: "api")
#   app.provision!          # => :created, :updated, :covered, :retention_mismatch, ...
#   app.publish(payload: { id: 1 })  # => the envelope Hash it sent
#   app.fetch_and_ack(10)   # => [[subject, envelope Hash], ...] as its consumer gets them
module PureRubyGem
  STREAM = "jetstream-bridge-stream"
  WORKQUEUE = "workqueue"

  # Its SubjectMatcher.overlap?: can two patterns match one subject?
  def self.overlap?(a, b)
    pa = a.split(".")
    pb = b.split(".")
    pa.zip(pb).each do |x, y|
      return true if x == ">" || y == ">"
      return false if x.nil? || y.nil?
      return false unless x == y || x == "*" || y == "*"
    end
    pa.size == pb.size
  end

  # Its SubjectMatcher.covered?: does a pattern match this subject?
  def self.covered?(patterns, subject)
    patterns.any? do |pattern|
      p = pattern.split(".")
      s = subject.split(".")
      p.each_with_index.all? { |t, i| t == ">" || (s[i] && (t == "*" || t == s[i])) } &&
        (p.size == s.size || p.include?(">"))
    end
  end

  # One app on the pure-Ruby gem 7.1.
  class App
    attr_reader :url, :app_name, :destination_app, :stream, :use_dlq

    def initialize(url, app_name:, destination_app:, stream: STREAM, use_dlq: true)
      @url = url
      @app_name = app_name
      @destination_app = destination_app
      @stream = stream
      @use_dlq = use_dlq
    end

    def source_subject = "#{app_name}.sync.#{destination_app}"
    def destination_subject = "#{destination_app}.sync.#{app_name}"
    def dlq_subject = "#{app_name}.sync.dlq"
    def durable_name = "#{app_name}-workers"

    # Topology.provision! then SubscriptionManager#create_consumer_if_missing! (what its
    # startup! with auto_provision does): the stream's outcome.
    def provision!
      outcome = ensure_stream!
      ensure_consumer!
      outcome
    end

    # Stream.ensure!: create with workqueue retention; on an existing stream with another
    # retention change nothing; else add the subjects it lacks that no other stream has.
    def ensure_stream!
      desired = [source_subject, destination_subject, (dlq_subject if use_dlq)].compact
      info = RawJetStream.stream_info(url, stream)
      return create_stream(desired) unless info

      config = info["config"]
      return :retention_mismatch unless config["retention"].to_s.downcase == WORKQUEUE

      existing = Array(config["subjects"])
      to_add = desired.reject { |s| PureRubyGem.covered?(existing, s) }
      return :covered if to_add.empty?

      allowed = to_add - blocked(to_add)
      return :all_blocked if allowed.empty?

      # apply_update: name, subjects and retention only (nats-pure's StreamConfig, compacted).
      api!("STREAM.UPDATE.#{stream}", name: stream, subjects: (existing + allowed).uniq, retention: config["retention"])
      :updated
    end

    # create_consumer_if_missing!: leaves an existing durable alone; else add_consumer as
    # nats-pure sends it (ack_wait in seconds times 1e9; backoff in seconds, as given).
    def ensure_consumer!
      return :exists if NatsApi.consumer_info(url, stream, durable_name)

      config = { name: durable_name, durable_name: durable_name, deliver_policy: "all", ack_policy: "explicit",
                 ack_wait: 30 * 1_000_000_000, max_deliver: 5, backoff: [1, 5, 15, 30, 60],
                 filter_subject: destination_subject }
      api!("CONSUMER.CREATE.#{stream}.#{durable_name}.#{destination_subject}", stream_name: stream, config: config)
      :created
    end

    # Publisher#publish(resource_type:, event_type:, payload:): its envelope, with the
    # header spelled as it spells it; returns the envelope.
    def publish(resource_type: "user", event_type: "created", payload: { id: 1 })
      envelope = { "event_id" => SecureRandom.uuid, "schema_version" => 1, "event_type" => event_type,
                   "producer" => app_name, "resource_id" => (payload[:id] || payload["id"]).to_s,
                   "occurred_at" => Time.now.utc.iso8601, "trace_id" => SecureRandom.hex(8),
                   "resource_type" => resource_type, "payload" => payload }
      ack = NatsApi.publish_with_headers(url, source_subject, JSON.generate(envelope), { "nats-msg-id" => envelope["event_id"] })
      raise "publish refused: #{ack.inspect}" if ack["error"]

      envelope
    end

    # Its pull consumer: fetch from its durable and ack: [[subject, envelope], ...].
    def fetch_and_ack(batch, timeout: 2)
      NatsApi.fetch_and_ack(url, stream, durable_name, batch, timeout: timeout).map { |s, body| [s, JSON.parse(body)] }
    end

    private

    def create_stream(desired)
      allowed = desired - blocked(desired)
      return :not_created if allowed.empty?

      api!("STREAM.CREATE.#{stream}", name: stream, subjects: allowed, retention: WORKQUEUE, storage: "file")
      :created
    end

    # OverlapGuard.partition_allowed: the subjects another stream's subjects overlap.
    def blocked(subjects)
      names = RawJetStream.request(url, "STREAM.NAMES", { offset: 0 })["streams"] || []
      others = (names - [stream]).flat_map { |name| RawJetStream.stream_info(url, name)["config"]["subjects"] || [] }
      subjects.select { |s| others.any? { |o| PureRubyGem.overlap?(s, o) } }
    end

    def api!(api, body)
      reply = RawJetStream.request(url, api, body)
      raise "#{api}: #{reply['error'].inspect}" if reply["error"]

      reply
    end
  end
end
