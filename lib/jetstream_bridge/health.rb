# frozen_string_literal: true

require "json"
require "time"

module JetstreamBridge
  # The README's health_check hash. Never raises: a failure is reported in the hash. The
  # stream and outbox figures are kept for CACHE_SECONDS, so a probe every second costs at
  # most one STREAM.INFO and one outbox query.
  module Health
    CACHE_SECONDS = 1.0
    # Longest wait, in seconds, for this process's pending outbox marks before counting.
    MARK_WAIT = 1.0

    module_function

    def check
      config = JetstreamBridge.config
      stream, rtt_ms = cached(:stream, config) { timed { stream_status(config) } }
      connected = Connection.connected?
      outbox = cached(:outbox, config) { outbox_status } if config.use_outbox
      max_age = config.health_outbox_max_age_seconds
      backlog_ok = max_age.nil? || outbox.nil? || outbox[:oldest_pending_age].to_f <= max_age
      {
        healthy: connected && (stream[:exists] == true || !config.verify_topology) && backlog_ok,
        nats_connected: connected,
        connected_at: Connection.connected_at,
        connection: { last_error: Connection.last_error, rtt_ms: rtt_ms },
        stream: stream,
        **(outbox ? { outbox: outbox } : {}),
        config: summary(config),
        version: VERSION
      }
    rescue StandardError => e
      { healthy: false, nats_connected: false, connected_at: nil, stream: { exists: false },
        config: {}, version: VERSION, error: "#{e.class}: #{Native.redact(e.message)}" }
    end

    # The block's value, computed at most once per CACHE_SECONDS for the same stream and
    # outbox, in this process (ProcessState#health; the connection's reset clears it).
    def cached(key, config)
      cache = ProcessState.current.health
      now = Background.monotonic
      scope = [config.stream_name, config.outbox_model.to_s]
      hit = cache[key]
      return hit[2] if hit && hit[0] == scope && now - hit[1] < CACHE_SECONDS

      value = yield
      cache[key] = [scope, now, value]
      value
    end

    def clear_cache
      ProcessState.current.health.clear
    end

    # [the block's value, its milliseconds]: the STREAM.INFO round trip is the rtt_ms
    # reported (nil when no request was made: verify_topology off, or not connected).
    def timed
      started = Background.monotonic
      status = yield
      ms = ((Background.monotonic - started) * 1000).round(3)
      [status, status[:exists].nil? || status[:error] ? nil : ms]
    end

    # Outbox rows waiting (pending or publishing), failed and dead, and how many seconds
    # ago the oldest unsent one (waiting or failed) was written: one GROUP BY query.
    def outbox_status
      # Rows this process published are marked sent in the background: wait (briefly) for
      # those marks, so delivered rows are not counted as backlog.
      Outbox.flush_marks(timeout: MARK_WAIT)
      t = Outbox.table
      time = %w[created_at enqueued_at updated_at].find { |c| t.has?(c) }
      statuses = [Outbox::PENDING, Outbox::PUBLISHING, Outbox::FAILED, Outbox::DEAD].map { |s| t.quote(s) }.join(", ")
      rows = t.with_connection do
        t.connection.select_rows("SELECT #{t.q('status')}, COUNT(*)#{", MIN(#{t.q(time)})" if time} FROM #{t.quoted_table} " \
                                 "WHERE #{t.q('status')} IN (#{statuses}) GROUP BY #{t.q('status')}", "JetstreamBridge health")
      end
      counts = rows.to_h { |status, count, _| [status, count.to_i] }
      oldest = rows.reject { |status, _, _| status == Outbox::DEAD }.filter_map { |_, _, at| at && time_of(at) }.min
      { pending: counts[Outbox::PENDING].to_i + counts[Outbox::PUBLISHING].to_i, failed: counts[Outbox::FAILED].to_i,
        dead: counts[Outbox::DEAD].to_i, oldest_pending_age: oldest && (Time.now - oldest).round(3) }
    rescue StandardError => e
      { error: "#{e.class}: #{Native.redact(e.message)}" }
    end

    # A time from a raw query: a Time, or a String the database wrote (UTC).
    def time_of(value)
      value.is_a?(Time) ? value : Time.parse("#{value} UTC")
    end

    def stream_status(config)
      name = config.stream_name
      return { exists: nil, name: name, verified: false } unless config.verify_topology

      raw = Connection.client.stream_info(name)
      return { exists: false, name: name } unless raw

      info = JSON.parse(raw)
      state = info["state"] || {}
      stream_config = info["config"] || {}
      empty = state["messages"].to_i.zero?
      { exists: true, name: name, subjects: stream_config["subjects"],
        messages: state["messages"], bytes: state["bytes"], consumers: state["consumer_count"],
        first_message_at: (state["first_ts"] unless empty), last_message_at: (state["last_ts"] unless empty),
        retention: stream_config["retention"], limits: limits(stream_config),
        # This app's limits the stream does not have (only the provision task changes them).
        limits_drift: Native.stream_limit_differences(JSON.generate(stream_config), config.stream_limits) }
    rescue StandardError => e
      { exists: false, name: name, error: "#{e.class}: #{Native.redact(e.message)}" }
    end

    # The stream's limits, nil where it has none (max_age in seconds).
    def limits(stream_config)
      age = stream_config["max_age"].to_i
      { max_age: (age / 1_000_000_000 if age.positive?),
        max_bytes: (stream_config["max_bytes"] if stream_config["max_bytes"].to_i.positive?),
        max_msgs: (stream_config["max_msgs"] if stream_config["max_msgs"].to_i.positive?) }
    end

    def summary(config)
      { subject_layout: config.subject_layout, env: config.env, app_name: config.app_name, destination_app: config.destination_app,
        nats_urls: config.to_h[:nats_urls], use_outbox: config.use_outbox, use_inbox: config.use_inbox,
        use_dlq: config.use_dlq }
    end
  end
end
