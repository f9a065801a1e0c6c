# frozen_string_literal: true

# Rake tasks for a Rails app using JetstreamBridge (loaded by JetstreamBridge::Railtie).
require "json"

require_relative "../jetstream_bridge/rake_support"

namespace :jetstream_bridge do
  desc "Print the health check as JSON; exit status 0 when healthy, 1 when not"
  task health: :environment do
    health = JetstreamBridge.health_check
    puts JSON.pretty_generate(health)
    exit(health[:healthy] == true ? 0 : 1)
  end

  desc "Validate the configuration; exit status 1 listing every problem"
  task validate: :environment do
    config = JetstreamBridge.config
    problems = config.errors
    if problems.empty?
      names = config.names
      puts "JetstreamBridge configuration is valid"
      puts "  stream:    #{config.stream_name}"
      puts "  publish:   #{names['publish_subject']}"
      puts "  subscribe: #{names['subscribe_subject']}"
      puts "  durable:   #{names['durable']}"
    else
      warn "JetstreamBridge configuration is invalid:"
      problems.each { |p| warn "  - #{p}" }
      exit 1
    end
  end

  desc "Connect to NATS and ensure the stream; exit status 1 when that fails"
  task test_connection: :environment do
    report = JetstreamBridge.ensure_topology!
    server = JetstreamBridge::Connection.client.server_info
    puts "Connected to NATS #{server['version']} (#{server['server_name']}) at #{JetstreamBridge.config.to_h[:nats_urls]}"
    puts "Stream #{report['stream']}: #{report['action']}"
  rescue JetstreamBridge::Error => e
    warn "Connection failed: #{e.class}: #{e.message}"
    exit 1
  end

  desc "Create or update the stream and the durable consumer, applying the configured stream limits (run once " \
       "with an account allowed to manage them, e.g. at deploy; optional DURABLE_NAME; CONFIRM=1 when the new " \
       "limits delete stored messages); exit status 1 on failure or refusal"
  task provision: :environment do
    JetstreamBridge::RakeSupport.provision
  end

  desc "Print debug information as JSON (configuration with secrets masked, names, server, health)"
  task debug: :environment do
    puts JSON.pretty_generate(JetstreamBridge::DebugHelper.debug_info)
  end

  desc "Exit status 0 when HEALTH_FILE was touched within MAX_AGE seconds (default 30), 1 otherwise: " \
       "a liveness probe for consume and outbox:relay run with HEALTH_FILE"
  task :alive do
    path = ENV["HEALTH_FILE"].to_s
    abort "jetstream_bridge: give HEALTH_FILE=<path>" if path.strip.empty?
    max_age = Float(ENV.fetch("MAX_AGE", "30"))
    exit(JetstreamBridge::Liveness.alive?(path, max_age) ? 0 : 1)
  rescue ArgumentError
    abort "jetstream_bridge: MAX_AGE must be a number of seconds, got #{ENV['MAX_AGE'].inspect}"
  end

  desc "Run a consumer until SIGTERM/SIGINT: HANDLER=MyHandler (class or object with " \
       "call(event, subject, deliveries)); optional DURABLE_NAME, BATCH_SIZE, CONCURRENCY (handler threads), " \
       "PROCESSES (worker processes), HEALTH_FILE"
  task consume: :environment do
    support = JetstreamBridge::RakeSupport
    processes = support.int_env("PROCESSES") || 1
    abort "jetstream_bridge: PROCESSES must be at least 1, got #{processes}" unless processes.positive?
    next support.consume if processes == 1

    support.handler_from_env # a bad HANDLER fails here, once, not in every worker
    puts "jetstream_bridge: #{processes} consumer processes (SIGTERM or Ctrl-C to stop all)"
    $stdout.flush
    supervisor = JetstreamBridge::Supervisor.new(processes: processes) { |worker| support.consume(worker: worker) }
    status = supervisor.run
    puts "jetstream_bridge: all consumer processes stopped"
    abort "jetstream_bridge: #{supervisor.error}" if supervisor.error
    exit status
  end

  namespace :dlq do
    desc "List dead letters, oldest first (optional LIMIT, default 100; AFTER=seq to page on)"
    task list: :environment do
      support = JetstreamBridge::RakeSupport
      entries = support.abort_on_error { JetstreamBridge::DeadLetters.list(limit: support.int_env("LIMIT") || 100, after: support.int_env("AFTER") || 0) }
      entries.each { |entry| puts support.dlq_line(entry) }
      puts "jetstream_bridge: #{entries.size} dead letter(s) shown"
    end

    desc "Show one dead letter: SEQ=<its stream sequence>"
    task show: :environment do
      support = JetstreamBridge::RakeSupport
      entry = support.abort_on_error { JetstreamBridge::DeadLetters.find(support.seq_env) } or abort "jetstream_bridge: no dead letter with seq #{ENV['SEQ']}"
      puts JSON.pretty_generate(support.dlq_details(entry))
    end

    desc "Replay dead letters to their original subject: SEQ=<seq>, or ALL=1 (optional REASON=)"
    task replay: :environment do
      support = JetstreamBridge::RakeSupport
      count = support.abort_on_error do
        support.all? ? JetstreamBridge::DeadLetters.replay_all(reason: ENV["REASON"]) : (JetstreamBridge::DeadLetters.replay(support.seq_env) && 1)
      end
      puts "jetstream_bridge: #{count} dead letter(s) replayed"
    end

    desc "Discard dead letters: SEQ=<seq>, or OLDER_THAN=7d, or ALL=1"
    task discard: :environment do
      support = JetstreamBridge::RakeSupport
      count = support.abort_on_error do
        if ENV["OLDER_THAN"].to_s.strip != "" then JetstreamBridge::DeadLetters.discard_all(older_than: ENV["OLDER_THAN"])
        elsif support.all? then JetstreamBridge::DeadLetters.discard_all
        else JetstreamBridge::DeadLetters.discard(support.seq_env) && 1
        end
      end
      puts "jetstream_bridge: #{count} dead letter(s) discarded"
    end
  end

  namespace :outbox do
    desc "Run the outbox relay until SIGTERM/SIGINT (optional BATCH_SIZE, INTERVAL, LEASE seconds, HEALTH_FILE)"
    task relay: :environment do
      relay = JetstreamBridge::RakeSupport.relay_from_env
      puts "jetstream_bridge: outbox relay running (SIGTERM or Ctrl-C to stop)"
      $stdout.flush
      liveness = JetstreamBridge::RakeSupport.liveness { relay.nats_available? && JetstreamBridge.connected? }
      relay.run!
      liveness&.stop
      puts "jetstream_bridge: outbox relay stopped, #{relay.totals.sent} sent"
    end

    desc "Send every unsent outbox row once (failed ones too, before their retry delay); " \
         "exit status 1 when some failed or NATS is unreachable"
    task flush: :environment do
      relay = JetstreamBridge::RakeSupport.relay_from_env
      result = relay.flush(due_only: false)
      puts "jetstream_bridge: outbox flushed: #{result.sent} sent (#{result.duplicates} duplicates), #{result.failed} failed"
      unless relay.nats_available?
        warn "jetstream_bridge: NATS is unreachable; rows stay in the outbox"
        exit 1
      end
      exit 1 if result.failed.positive?
    end

    desc "Delete sent outbox rows older than OLDER_THAN (e.g. 7d), in batches"
    task prune: :environment do
      JetstreamBridge::RakeSupport.prune(JetstreamBridge::Outbox, "sent outbox row(s)")
    end

    desc "Revive dead outbox rows (retried by the next relay pass): ID=<row id>, or ALL=1"
    task retry: :environment do
      support = JetstreamBridge::RakeSupport
      ids = support.all? ? nil : [support.int_env("ID") || abort("jetstream_bridge: give ID=<outbox row id> (or ALL=1)")]
      count = JetstreamBridge::Outbox.retry_dead(ids: ids)
      puts "jetstream_bridge: #{count} dead outbox row(s) revived"
    end
  end

  namespace :inbox do
    desc "Delete processed inbox rows older than OLDER_THAN (e.g. 30d), in batches; refuses a cutoff within the redelivery horizon"
    task prune: :environment do
      JetstreamBridge::RakeSupport.prune(JetstreamBridge::Inbox, "processed inbox row(s)")
    end
  end
end
