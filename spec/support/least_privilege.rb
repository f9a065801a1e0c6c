# frozen_string_literal: true

require "securerandom"
require_relative "nats_server"

# The least-privilege specs' server: a nats-server of its own per example whose user
# `admin` may do anything and whose other users may publish and subscribe to exactly the
# subjects listed. Each user's password is "<user>-pw" (url_for(user) connects as one).
#
#   LeastPrivilege.serve(self, "app" => { publish: [...], subscribe: [...] })
module LeastPrivilege
  module_function

  # A fresh env (`prefix` and random hex) for app "app" sending to "other", with its names,
  # stream and durable: [env, names, stream, durable].
  def app_names(prefix)
    env = "#{prefix}#{SecureRandom.hex(3)}"
    names = JetstreamBridge::Native.names("env", env, "app", "other")
    [env, names, names["stream"], names["durable"]]
  end

  # Runs each example of `group` against such a server (`users`: name => {publish:,
  # subscribe:}); stops its consumers and resets the bridge after.
  def serve(group, users)
    config = authorization(users)
    group.include(self)
    group.around do |example|
      @server = NatsServer.new(config: config).start
      example.run
    ensure
      stop_consumers
      JetstreamBridge.reset!
      @server&.cleanup
    end
  end

  def authorization(users)
    quoted = ->(subjects) { subjects.map { |s| "\"#{s}\"" }.join(", ") }
    entries = users.map do |user, allowed|
      "{ user: #{user}, password: #{user}-pw, permissions: { publish: { allow: [#{quoted.(allowed.fetch(:publish))}] }, " \
        "subscribe: { allow: [#{quoted.(allowed.fetch(:subscribe))}] } } }"
    end
    "authorization {\n  users = [\n    { user: admin, password: admin-pw }\n    #{entries.join("\n    ")}\n  ]\n}\n"
  end

  def url_for(user) = "nats://#{user}:#{user}-pw@127.0.0.1:#{@server.port}"

  # An envelope another app would publish, with `id` as event_id and payload id.
  def envelope(id) = JSON.generate(event_id: id, schema_version: 1, event_type: "user.created", payload: { id: id })
end
