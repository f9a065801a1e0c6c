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
      { exists: true, name: name, subjects: info.dig("config", "subjects"),
        messages: state["messages"], bytes: state["bytes"], consumers: state["consumer_count"],
        retention: info.dig("config", "retention") }
    rescue StandardError => e
      { exists: false, name: name, error: "#{e.class}: #{Native.redact(e.message)}" }
    end

    def summary(config)
      { env: config.env, app_name: config.app_name, destination_app: config.destination_app,
        nats_urls: config.to_h[:nats_urls], use_outbox: config.use_outbox, use_inbox: config.use_inbox,
        use_dlq: config.use_dlq }
    end
  end
end
