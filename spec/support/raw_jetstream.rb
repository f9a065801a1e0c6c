# frozen_string_literal: true

require_relative "nats_api"

# Stream-level JetStream API calls over a raw socket (NatsApi), bypassing the gem: used to
# put the server in states the bridge itself never creates (a stream with workqueue
# retention, as the original pure-Ruby gem made; a stream with wildcard subjects) and to
# inspect streams independently of the code under test.
module RawJetStream
  module_function

  # Sends `$JS.API.<api>` with `body` and returns the parsed reply.
  def request(url, api, body = {})
    NatsApi.request(url, "$JS.API.#{api}", body)
  end

  # Creates a stream with an arbitrary config (e.g. retention: "workqueue").
  def create_stream(url, name, subjects, **extra)
    config = { name: name, subjects: subjects, retention: "limits", storage: "file",
               num_replicas: 1, discard: "old", max_consumers: -1, max_msgs: -1, max_bytes: -1,
               max_age: 0, max_msg_size: -1 }.merge(extra)
    reply = request(url, "STREAM.CREATE.#{name}", config)
    raise "stream #{name} not created: #{reply['error'].inspect}" if reply["error"]

    reply
  end

  # The stream's info, or nil when it does not exist.
  def stream_info(url, name)
    reply = request(url, "STREAM.INFO.#{name}")
    return nil if reply.dig("error", "code") == 404
    raise "stream info #{name}: #{reply['error'].inspect}" if reply["error"]

    reply
  end
end
