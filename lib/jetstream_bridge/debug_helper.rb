# frozen_string_literal: true

module JetstreamBridge
  # Everything useful when something is wrong, with secrets masked.
  module DebugHelper
    module_function

    def debug_info
      config = JetstreamBridge.config
      info = { version: VERSION, ruby: RUBY_VERSION, pid: Process.pid, config: config.to_h,
               config_errors: config.errors }
      info[:names] = config.names if info[:config_errors].empty?
      info[:health] = Health.check
      info[:server] = Connection.connected? ? Connection.client.server_info : nil
      info[:topology] = Connection.topology
      info
    rescue StandardError => e
      info.merge(error: "#{e.class}: #{Native.redact(e.message)}")
    end
  end
end
