# frozen_string_literal: true

require "json"

module JetstreamBridge
  # Helpers of the jetstream_bridge:* tasks.
  module RakeSupport
    module_function

    # HANDLER="MyHandler": a class or object responding to call(event, subject, deliveries),
    # or a class whose instances do (instantiated with no arguments).
    def handler_from_env(name = ENV["HANDLER"])
      abort "jetstream_bridge:consume needs HANDLER=YourHandlerClass (responding to call(event, subject, deliveries))" if name.to_s.strip.empty?

      handler = handler_named(name.strip)
      abort "HANDLER #{name} does not respond to call(event, subject, deliveries)" unless handler.respond_to?(:call)

      JetstreamBridge::Consumer::HandlerSignature.check!(handler, "HANDLER #{name}")
      handler
    rescue ArgumentError => e # the handler's call cannot take a delivery (check! names it)
      abort e.message
    end

    # The constant `name`, or a new instance when it is a class that does not respond to call.
    def handler_named(name)
      handler = Object.const_get(name)
      handler.is_a?(Class) && !handler.respond_to?(:call) ? handler.new : handler
    rescue NameError, ArgumentError => e
      abort "HANDLER #{name}: #{e.message}"
    end

    def int_env(name)
      value = ENV[name].to_s.strip
      value.empty? ? nil : Integer(value)
    rescue ArgumentError
      abort "#{name} must be an integer, got #{ENV[name].inspect}"
    end

    # SEQ=<a dead letter's stream sequence>.
    def seq_env
      abort "jetstream_bridge: give SEQ=<seq> (or ALL=1)" if ENV["SEQ"].to_s.strip.empty?
      Integer(ENV["SEQ"].strip, 10)
    rescue ArgumentError
      abort "jetstream_bridge: SEQ must be a dead letter's stream sequence (a positive integer), got #{ENV['SEQ'].inspect}"
    end

    def all? = ENV["ALL"].to_s.strip == "1"

    # rake jetstream_bridge:provision: the stream, its limits applied (CONFIRM=1 when that
    # deletes stored messages: without it the task says what would go and exits 1), and
    # the durable (DURABLE_NAME=).
    def provision
      durable = ENV["DURABLE_NAME"].to_s.strip
      confirm = ENV["CONFIRM"].to_s.strip == "1"
      result = abort_on_error { JetstreamBridge.provision!(durable_name: (durable unless durable.empty?), confirm: confirm) }
      stream = result[:stream]
      action, changes = result[:consumer]
      puts "jetstream_bridge: stream #{stream['stream']} #{stream['action']}; consumer #{action}#{" (#{changes.join(', ')})" unless changes.empty?}"
      return if stream["limits_changed"].empty?

      deletes = stream["deletes"]
      deleted = "; deleted about #{deletes['messages']} stored messages (about #{deletes['bytes']} bytes)" if deletes["messages"].positive?
      puts "jetstream_bridge: stream limits changed: #{stream['limits_changed'].join(', ')}#{deleted}"
    end

    # OLDER_THAN=7d (required).
    def older_than_env
      value = ENV["OLDER_THAN"].to_s.strip
      abort "jetstream_bridge: give OLDER_THAN=<duration> (e.g. 7d)" if value.empty?
      value
    end

    # Outbox.prune or Inbox.prune with OLDER_THAN, printing its progress.
    def prune(target, rows)
      older_than = older_than_env
      progress = ->(deleted) { puts "jetstream_bridge: #{deleted} #{rows} deleted so far"; $stdout.flush }
      count = abort_on_error { target.prune(older_than: older_than, &progress) }
      puts "jetstream_bridge: #{count} #{rows} older than #{older_than} deleted"
    end

    # Runs the task's operation; bad input or a failure ends the task with status 1.
    def abort_on_error
      yield
    rescue ArgumentError, JetstreamBridge::Error => e
      abort "jetstream_bridge: #{e.message}"
    end

    def dlq_line(entry)
      "#{entry.seq}  #{entry.failed_at.utc.iso8601}  #{entry.reason}  #{entry.event_id}  #{entry.original_subject}  " \
        "#{entry.error_class}: #{entry.error_message}"
    end

    def dlq_details(entry)
      { seq: entry.seq, event_id: entry.event_id, reason: entry.reason, error_class: entry.error_class,
        error_message: entry.error_message, deliveries: entry.deliveries, original_subject: entry.original_subject,
        failed_at: entry.failed_at.utc.iso8601(3), headers: entry.headers, event: entry.event || entry.body }
    end

    # HEALTH_FILE=path: touched every few seconds while the block says the process is
    # healthy (see Liveness); nil without HEALTH_FILE. A worker of PROCESSES= touches
    # path.<worker> (path.0, path.1...).
    def liveness(worker: nil, &healthy)
      path = ENV["HEALTH_FILE"].to_s.strip
      return nil if path.empty?

      JetstreamBridge::Liveness.start(worker ? "#{path}.#{worker}" : path, &healthy)
    end

    # One consumer until SIGTERM/SIGINT, from HANDLER, DURABLE_NAME, BATCH_SIZE,
    # CONCURRENCY and HEALTH_FILE (rake jetstream_bridge:consume, or one of its workers).
    def consume(worker: nil)
      handler = handler_from_env
      durable = ENV["DURABLE_NAME"].to_s.strip
      consumer = JetstreamBridge.subscribe(handler, durable_name: (durable unless durable.empty?),
                                                    batch_size: int_env("BATCH_SIZE"), concurrency: int_env("CONCURRENCY"))
      who = worker ? "worker #{worker} (pid #{Process.pid})" : "jetstream_bridge"
      puts "#{who}: consuming #{JetstreamBridge.config.destination_subject} as #{consumer.durable_name} " \
           "with #{ENV['HANDLER']} (SIGTERM or Ctrl-C to stop)"
      $stdout.flush
      probe = liveness(worker: worker) { JetstreamBridge.connected? && !consumer.handler_stuck? }
      consumer.run!
      probe&.stop
      puts "#{who}: consumer stopped"
      $stdout.flush
    end

    def relay_from_env
      options = {}
      options[:batch_size] = int_env("BATCH_SIZE") if int_env("BATCH_SIZE")
      options[:interval] = ENV["INTERVAL"] if ENV["INTERVAL"].to_s.strip != "" # a duration or seconds
      options[:lease] = ENV["LEASE"] if ENV["LEASE"].to_s.strip != ""
      JetstreamBridge::OutboxRelay.new(**options)
    end
  end
end
