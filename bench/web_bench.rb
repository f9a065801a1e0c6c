# frozen_string_literal: true

# What a dashboard page (JetstreamBridge::Web) costs to render with a large DLQ and outbox:
# DLQ entries stored as the consumer stores them, outbox rows in PostgreSQL (the generated
# migration's table and indexes: mostly sent, some pending, failed and dead; inbox rows too),
# then each page requested through Rack, times printed (median and worst of RUNS).
#   ruby -Ilib bench/web_bench.rb [dead letters] [outbox rows]    # 10_000 1_000_000
require_relative "support"
require_relative "../spec/support/active_record_db"
require "rack/mock"
require "jetstream_bridge/web"

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

# Requests per page; the dead letters and outbox rows to fill (the inbox gets a tenth).
RUNS = 20
dead_letters, outbox_rows = [10_000, 1_000_000].each_with_index.map { |default, i| Integer(ARGV[i] || default) }

db = ActiveRecordDb.postgres.activate!
Bench.configure(env: "web-bench", use_dlq: true, use_outbox: true, use_inbox: true)
config = JetstreamBridge.config
client = JetstreamBridge::Connection.client

started = monotonic
events = Array.new(dead_letters) do |i|
  body = JSON.generate(event_id: "ev-#{i}", schema_version: 1, event_type: "user.created", producer: "bench",
                       payload: Bench.payload(i, "x" * 200))
  headers = { "X-Dead-Letter-Reason" => i.even? ? "max_deliver" : "unrecoverable",
              "X-Original-Subject" => config.destination_subject, "X-Error-Class" => "RuntimeError",
              "X-Error-Message" => "downstream timeout", "X-Deliveries" => "5",
              "X-Failed-At" => Time.now.utc.iso8601(3), "X-Original-Msg-Id" => "ev-#{i}" }
  JetstreamBridge::Native::BuiltEvent.new(subject: config.dlq_subject, event_id: "dlq:bench:#{i}", json: body, headers: headers)
end
client.publish_events(events, JetstreamBridge::Event.defaults(config), 256, false)
dlq_seconds = monotonic - started

# Outbox rows in one INSERT ... SELECT: 1% failed, 0.1% dead, 0.5% pending, the rest sent.
started = monotonic
conn = ActiveRecord::Base.connection
conn.execute(<<~SQL)
  INSERT INTO jetstream_outbox_events (event_id, subject, payload, headers, status, attempts, last_error, enqueued_at, sent_at, created_at, updated_at)
  SELECT 'ob-' || g, '#{config.source_subject}', ('{"event_type":"user.created","payload":{"id":' || g || '}}')::json, '{}',
         CASE WHEN g % 1000 = 0 THEN 'dead' WHEN g % 100 = 0 THEN 'failed' WHEN g % 200 = 1 THEN 'pending' ELSE 'sent' END,
         CASE WHEN g % 100 = 0 THEN 3 ELSE 1 END,
         CASE WHEN g % 100 = 0 THEN 'JetstreamBridge::ConnectionError: nats://[REDACTED]@nats:4222 unreachable' END,
         now() - (#{outbox_rows} - g) * interval '10 ms', now(), now() - (#{outbox_rows} - g) * interval '10 ms', now()
  FROM generate_series(1, #{outbox_rows}) AS g
SQL
conn.execute(<<~SQL)
  INSERT INTO jetstream_inbox_events (event_id, subject, payload, headers, status, deliveries, last_error, received_at, processed_at, created_at, updated_at)
  SELECT 'in-' || g, '#{config.destination_subject}', '{}', '{}', CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'processed' END, 1,
         CASE WHEN g % 100 = 0 THEN 'ArgumentError: bad payload' END, now(), now(), now(), now()
  FROM generate_series(1, #{outbox_rows / 10}) AS g
SQL
conn.execute("VACUUM ANALYZE jetstream_outbox_events")
conn.execute("VACUUM ANALYZE jetstream_inbox_events")
db_seconds = monotonic - started

puts format("filled: %<d>d dead letters in %<ds>.1f s; %<o>d outbox rows and %<i>d inbox rows (PostgreSQL) in %<os>.1f s",
            d: dead_letters, ds: dlq_seconds, o: outbox_rows, i: outbox_rows / 10, os: db_seconds)

app = Rack::MockRequest.new(JetstreamBridge::Web)
middle = (dead_letters / 2) + 1
pages = ["/", "/dead_letters", "/dead_letters?reason=unrecoverable", "/dead_letters?after=#{middle}",
         "/dead_letters/#{middle}", "/outbox", "/inbox"]
puts format("%-40s %10s %10s %10s", "page", "median ms", "max ms", "bytes")
pages.each do |path|
  times = Array.new(RUNS) do
    t = monotonic
    response = app.get(path)
    raise "#{path}: #{response.status}\n#{response.body[0, 2000]}" unless response.status == 200

    [(monotonic - t) * 1000, response.body.bytesize]
  end
  ms = times.map(&:first).sort
  puts format("%-40s %10.1f %10.1f %10d", path, ms[ms.size / 2], ms.last, times.last.last)
end
puts "(nats-server #{Bench.server.version}, PostgreSQL #{conn.select_value('SHOW server_version')}, #{RUNS} requests each)"
