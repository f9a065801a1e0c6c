# frozen_string_literal: true

require "json"

module JetstreamBridge
  # The README's health_check hash. Never raises: a failure is reported in the hash.
  module Health
    module_function

    def check
      config = JetstreamBridge.config
      stream = stream_status(config)
      connected = Connection.connected?
      {
        healthy: connected && stream[:exists] == true,
        nats_connected: connected,
        connected_at: Connection.connected_at,
        stream: stream,
        config: summary(config),
        version: VERSION
      }
    rescue StandardError => e
      { healthy: false, nats_connected: false, connected_at: nil, stream: { exists: false },
        config: {}, version: VERSION, error: "#{e.class}: #{Native.redact(e.message)}" }
    end

    def stream_status(config)
      name = config.stream_name
      raw = Connection.client.stream_info(name)
      return { exists: false, name: name } unless raw

      info = JSON.parse(raw)
      state = info["state"] || {}
      stream_config = info["config"] || {}
      empty = state["messages"].to_i.zero?
      { exists: true, name: name, subjects: stream_config["subjects"],
        messages: state["messages"], bytes: state["bytes"], consumers: state["consumer_count"],
        first_message_at: (state["first_ts"] unless empty), last_message_at: (state["last_ts"] unless empty),
        retention: stream_config["retention"], limits: limits(stream_config) }
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
      { env: config.env, app_name: config.app_name, destination_app: config.destination_app,
        nats_urls: config.to_h[:nats_urls], use_outbox: config.use_outbox, use_inbox: config.use_inbox,
        use_dlq: config.use_dlq }
    end
  end
end
