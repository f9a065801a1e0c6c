# frozen_string_literal: true

require "json"
require "time"

module JetstreamBridge
  class Web
    # The first page: the connection, the stream and how full its limits are, each durable
    # on it, the throughput chart and the app's health verdict.
    class Overview
      def initialize(web)
        @web = web
      end

      def show
        health = JetstreamBridge.health_check
        info, error = stream_info
        rates = info ? Throughput.sample(stream_name, info.dig("state", "last_seq")) : []
        refresh = @web.request.params["refresh"] == "off" ? nil : Web.refresh_seconds
        @web.page(:overview, title: "Overview", refresh: refresh, health: health, server: server,
                             stream: health[:stream] || {}, info: info, info_error: error,
                             fullness: info ? fullness(info) : [], consumers: consumers(info),
                             chart: Chart.svg(rates))
      end

      private

      def stream_name = JetstreamBridge.config.stream_name

      # [the stream's info with its consumers, nil] or [nil, the error].
      def stream_info
        raw = Connection.client.stream_info(stream_name, true)
        raw ? [JSON.parse(raw), nil] : [nil, "stream #{stream_name} does not exist"]
      rescue StandardError => e
        [nil, "#{e.class}: #{Native.redact(e.message)}"]
      end

      def server
        return nil unless Connection.connected?

        Connection.client.server_info
      rescue StandardError
        nil
      end

      # [[limit, value, limit value, percent full]] for each limit the stream has.
      def fullness(info)
        state = info["state"] || {}
        config = info["config"] || {}
        rows = []
        rows << ["messages", state["messages"].to_i, config["max_msgs"].to_i, :number] if config["max_msgs"].to_i.positive?
        rows << ["bytes", state["bytes"].to_i, config["max_bytes"].to_i, :bytes] if config["max_bytes"].to_i.positive?
        if config["max_age"].to_i.positive?
          first = state["messages"].to_i.positive? && state["first_ts"] ? Time.now - Time.parse(state["first_ts"]) : 0
          rows << ["age of the oldest message", first, config["max_age"].to_i / 1_000_000_000.0, :age]
        end
        if config["max_msgs_per_subject"].to_i.positive?
          rows << ["messages per subject (limit)", nil, config["max_msgs_per_subject"].to_i, :number]
        end
        rows
      end

      def consumers(info)
        Array(info && info["consumers"]).map do |c|
          config = c["config"] || {}
          active = [c.dig("delivered", "last_active"), c.dig("ack_floor", "last_active")].compact.max
          { name: c["name"], durable: config["durable_name"],
            filter: config["filter_subject"] || Array(config["filter_subjects"]).join(", "),
            kind: config["deliver_subject"] ? "push" : "pull",
            pending: c["num_pending"], ack_pending: c["num_ack_pending"], redelivered: c["num_redelivered"],
            waiting: c["num_waiting"], delivered: c.dig("delivered", "stream_seq"), last_active: active }
        end
      end
    end
  end
end
