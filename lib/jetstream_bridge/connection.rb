# frozen_string_literal: true

require_relative "connection/watcher"

module JetstreamBridge
  # The process's one NATS connection, made on first use.
  #
  # Fork: a child must not use the parent's connection (its I/O threads exist only in the
  # parent). It is held in ProcessState, which a child makes anew: the child connects anew.
  # The native handle itself knows its PID and leaks, rather than frees, a parent's
  # connection, so nothing of the parent's runtime is touched in the child.
  module Connection
    # What a process holds of its connection (ProcessState#connection). `client` is read
    # without the mutex, which guards making and closing it.
    State = Struct.new(:mutex, :client, :topology, :last_error, :watcher, :disconnected) do
      def initialize = super(Mutex.new)

      # Closes the client (flushing what was sent) and forgets it and what went with it.
      def close!
        mutex.synchronize do
          begin
            client&.close
          rescue Error
            nil # closing a dead connection has nothing left to flush
          end
          self.client = self.topology = self.last_error = self.disconnected = nil
          watcher&.stop
          self.watcher = nil
        end
      end
    end

    class << self
      # The connected native client; connects and provisions on first call.
      def client
        s = state
        current = s.client
        return current if current
        return connect_from_trap(s) if Signals.trap_context?

        s.mutex.synchronize { s.client || connect!(s) }
      end

      # The client when this process has connected already, else nil (connects nothing).
      def current_client = state.client

      def connected?
        current = state.client
        !current.nil? && current.connected?
      end

      def connected_at = state.client&.connected_at

      # Last provisioning report (Hash), if provisioning ran.
      def topology = state.topology

      # Ensures the stream now (connecting first if needed); returns the report. With
      # auto_provision off it only checks (info calls) and raises TopologyError naming what
      # is missing.
      def ensure_topology!
        # When this call connects, connecting has just provisioned or checked: return that
        # report rather than doing it twice (and saying "unchanged" after "created").
        s = state
        connecting = s.client.nil?
        current = client
        return s.topology if connecting && s.topology

        report = topology!(current, app_topology)
        drain_events
        report
      end

      # Logs what the core recorded (reconnects, disconnects...) and sends the connection
      # events (connection.jetstream_bridge). Cheap when nothing is queued. The Watcher
      # calls it as events arrive; publish and the consumer call it too.
      def drain_events(c = current_client)
        return unless c&.events_pending?
        # A signal handler may not log (Logger takes a Mutex): the watcher logs them soon.
        return if Signals.trap_context?

        drained = c.drain_events
        drained.events.each do |event|
          state.last_error = event.message if event.level == "error" # redacted by the core
          Instrumentation.emit(event.level, event.kind, event.message)
          connection_event(c, event)
        end
        dropped = drained.dropped
        Instrumentation.emit("warn", "events_dropped", "#{dropped} connection events were dropped") if dropped.positive?
      end

      # The core's event kinds reported as connection.jetstream_bridge `event`s.
      CONNECTION_EVENTS = { "connected" => :connected, "disconnected" => :disconnected, "lame_duck_mode" => :lame_duck,
                            "server_error" => :error, "client_error" => :error }.freeze
      CONNECTION_EVENT = "connection.jetstream_bridge"

      # Creates or updates the stream now, whatever auto_provision says, applying the
      # configured limits to an existing stream: JetstreamBridge.provision!. A change of
      # limits that would delete stored messages raises TopologyError saying what, and
      # changes nothing, unless `confirm`.
      def provision_stream!(confirm: false)
        report = topology!(client, confirm ? :apply_deleting : :apply)
        drain_events
        raise TopologyError, refusal(report) if report["action"] == "refused"

        report
      end

      # The last error the connection reported (a server error, a failed reconnect...), or nil.
      def last_error = state.last_error

      # Closes the connection (flushing what was sent).
      def close!
        state.close!
        Health.clear_cache
      end

      private

      # This process's connection state.
      def state = ProcessState.current.connection

      # First use from a signal handler: connect on a short-lived thread, which may take the
      # Mutex, and wait for it (its error is raised here). Unless the signal interrupted this
      # very thread while it held the Mutex to connect: that thread would wait forever.
      def connect_from_trap(s)
        if s.mutex.owned?
          raise ConnectionError, "not connected yet: a signal handler interrupted the connection being made and cannot wait for it"
        end

        Background.thread("connect") do
          Thread.current.thread_variable_set(Signals::TRAP_HELPER, true) # its log lines must not wait (see emit)
          client
        end.value
      end

      # connection.jetstream_bridge, and config.on_error for a server's error, of a
      # Native::ConnectionEvent (`at`: when the core saw it, ISO-8601). A connect after a
      # disconnect is :reconnected.
      def connection_event(client, recorded)
        event = CONNECTION_EVENTS[recorded.kind] or return
        s = state
        s.disconnected = true if event == :disconnected
        event = :reconnected if event == :connected && s.disconnected
        if recorded.level == "error"
          ErrorReporter.report(ConnectionError.new(recorded.message), { source: :connection, event: event, at: recorded.at })
        end
        return unless Instrumentation.listening?(CONNECTION_EVENT)

        Instrumentation.notify(CONNECTION_EVENT, { event: event, server: server_of(client), message: recorded.message, at: recorded.at })
      end

      def server_of(client)
        info = client.server_info
        "#{info['server_name']} (#{info['host']}:#{info['port']})"
      rescue Error
        nil
      end

      # Connects `s` (its mutex held).
      def connect!(s)
        config = JetstreamBridge.config
        config.validate!
        client = connect_native(config)
        Instrumentation.emit("info", "connected", "connected to #{config.urls.map { |u| Native.redact(u) }.join(',')}")
        # Provisioned before s.client is set: other threads take s.client without the lock,
        # and publishing before the stream exists gets "no responders" (StreamNotFoundError,
        # which publish_batch does not retry).
        if config.auto_provision then topology!(client, :keep)
        elsif config.verify_topology then check_topology(client)
        end
        s.client = client
        s.disconnected = false
        s.watcher = Watcher.new(client)
        client
      rescue StandardError
        s.client = nil
        raise
      end

      # Connects. A failure names what was tried (kinds of credentials, TLS files; never a
      # secret), so a wrong password, an unknown CA and a bad credentials file are told apart.
      def connect_native(config)
        check_files!(config)
        Native::Client.connect(config.connect_options)
      rescue ConnectionError => e
        raise e.class, "#{e.message} (#{connect_context(config)})", e.backtrace
      end

      FILE_SETTINGS = %i[credentials_file tls_ca_file tls_cert_file tls_key_file].freeze

      # A missing or unreadable credentials/TLS file is a configuration problem: say which.
      def check_files!(config)
        FILE_SETTINGS.each do |name|
          path = config.public_send(name).to_s
          next if path.empty? || (File.file?(path) && File.readable?(path))

          raise ConfigurationError, "#{name} #{path} #{File.exist?(path) ? 'is not a readable file' : 'does not exist'}"
        end
      end

      def connect_context(config)
        set = ->(name) { !config.public_send(name).to_s.empty? }
        auth = []
        auth << "user #{config.user.to_s.inspect} with a password" if set.(:user)
        auth << "token" if set.(:token)
        auth << "NKey seed" if set.(:nkey_seed)
        auth << "credentials file #{config.credentials_file}" if set.(:credentials_file)
        auth << "credentials in nats_urls" if auth.empty? && config.urls.any? { |u| u.match?(%r{\A\w+://[^/]*@}) }
        tls = []
        tls << "CA file #{config.tls_ca_file}" if set.(:tls_ca_file)
        tls << "client certificate #{config.tls_cert_file}" if set.(:tls_cert_file)
        "auth: #{auth.empty? ? 'none' : auth.join(', ')}#{"; TLS: #{tls.join(', ')}" unless tls.empty?}"
      end

      # What an app process asks of the stream: provisioning that keeps an existing
      # stream's limits (:keep: lowering one deletes stored messages at once, every app's,
      # so that is the operator's decision, provision_stream!), or with auto_provision off
      # a check by info calls (:verify), or with verify_topology off nothing (:unverified).
      def app_topology
        config = JetstreamBridge.config
        if config.auto_provision then :keep
        elsif config.verify_topology then :verify
        else :unverified
        end
      end

      # The stream provisioned or checked as `how` says (app_topology, provision_stream!),
      # in one core call; returns its report. A check that finds something missing raises
      # TopologyError naming it.
      def topology!(client, how)
        report = client.ensure_stream(JetstreamBridge.config.stream_spec, how)
        state.topology = report
        CHECKS.include?(how) ? warn_limits_drift(report["stream"], report["limits_drift"]) : log_topology(report)
        report
      end

      # The `how`s that only look (nothing provisioned to log but the limits' drift).
      CHECKS = %i[verify unverified].freeze

      # Connecting with auto_provision off: a missing stream is logged, not raised, so the
      # connection (and health_check) stays usable; ensure_topology! and publish raise it.
      def check_topology(client)
        topology!(client, :verify)
      rescue TopologyError => e
        Instrumentation.emit("error", "topology_missing", e.message)
      end

      def log_topology(report)
        return if report["action"] == "refused" # nothing was done: provision_stream! raises what and why

        stream = report["stream"]
        Instrumentation.emit("info", "stream_provisioned",
                             "stream #{stream} #{report['action']}; added #{report['added'].inspect}, already covered #{report['covered'].inspect}",
                             report: report)
        Array(report["notes"]).each { |note| Instrumentation.emit("warn", "stream_mismatch", note) }
        warn_limits_drift(stream, Array(report["limits_drift"]))
        log_limits_changed(report) unless Array(report["limits_changed"]).empty?
        report["owned_elsewhere"].each do |subject, owner|
          Instrumentation.emit("warn", "subject_overlap",
                               "subject #{subject} is owned by stream #{owner}; left out of #{stream}")
        end
        config = JetstreamBridge.config
        return if report["retention"].to_s.empty? || report["retention"] == config.names["retention"]

        pure_ruby = "; the pure-Ruby gem 7.x adds no subject to a stream without workqueue retention" if config.layout == :app
        Instrumentation.emit("warn", "stream_retention",
                             "stream #{stream} has #{report['retention']} retention (not changed); the bridge creates " \
                             "#{config.names['retention']} retention under subject_layout #{config.layout.inspect}#{pure_ruby}")
      end

      # `drift`: how the stream's limits differ from this app's settings (Native.stream_limit_differences).
      def warn_limits_drift(stream, drift)
        return if drift.empty?

        Instrumentation.emit("warn", "stream_limits_drift",
                             "stream #{stream} limits differ from this app's settings, left as is (only rake jetstream_bridge:provision " \
                             "changes an existing stream's limits): #{drift.join('; ')}")
      end

      # A warning when the new limits deleted stored messages.
      def log_limits_changed(report)
        deletes = report["deletes"]
        deleted = "; deleted about #{deletes['messages']} stored messages (about #{deletes['bytes']} bytes)" if deletes && deletes["messages"].positive?
        Instrumentation.emit(deleted ? "warn" : "info", "stream_limits_updated",
                             "stream #{report['stream']} limits updated: #{report['limits_changed'].join(', ')}#{deleted}")
      end

      # What applying the limits would have deleted (a "refused" report), and how to go ahead.
      def refusal(report)
        deletes = report["deletes"]
        "stream #{report['stream']}: applying the configured limits would delete about #{deletes['messages']} of " \
          "#{deletes['stored']} stored messages (about #{deletes['bytes']} bytes; the oldest first, every app's events and dead letters alike):\n" \
          "#{deletes['lines'].map { |line| "  #{line}\n" }.join}" \
          "Nothing was changed. To apply them anyway: rake jetstream_bridge:provision CONFIRM=1 (JetstreamBridge.provision!(confirm: true))."
      end
    end
  end
end
