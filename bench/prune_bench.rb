# frozen_string_literal: true

# Pruning a large outbox on PostgreSQL: JetstreamBridge::Outbox.prune of N sent rows
# (with N/10 unsent rows beside them, which must stay), its total time and its longest
# single DELETE (the longest the table is locked for anyone else's writes to those rows).
#   ruby -Ilib bench/prune_bench.rb [rows]
require_relative "support"
require_relative "../spec/support/active_record_db"

rows = Integer(ARGV[0] || 1_000_000)

def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

db = ActiveRecordDb.postgres
db.activate!
Bench.configure(env: "prune-bench", use_outbox: true)
conn = ActiveRecord::Base.connection
old = (Time.now - (30 * 86_400)).utc
# generate_series writes the rows in one statement each (setup, not measured).
fill = lambda do |count, status, offset|
  conn.execute(<<~SQL)
    INSERT INTO jetstream_outbox_events (event_id, subject, payload, status, attempts, sent_at, created_at, updated_at)
    SELECT 'ev-' || (g + #{offset}), 'prune.bench', '{"event_id":"x","payload":{"name":"Zoë"}}', '#{status}', 1,
           #{status == 'sent' ? conn.quote(old) : 'NULL'}, #{conn.quote(old)}, #{conn.quote(old)}
    FROM generate_series(1, #{count}) AS g
  SQL
end
fill.call(rows, "sent", 0)
fill.call(rows / 10, "failed", rows)
conn.execute("ANALYZE jetstream_outbox_events")

statements = []
last = monotonic
started = last
deleted = JetstreamBridge::Outbox.prune(older_than: "7d") do |_total|
  now = monotonic
  statements << now - last
  last = now
end
seconds = monotonic - started
left = JetstreamBridge::OutboxEvent.group(:status).count
puts format("Outbox.prune: %<n>d sent rows in %<s>.1f s, %<k>d DELETE statements, longest %<max>.0f ms, median %<med>.0f ms; " \
            "left %<left>s (PostgreSQL %<v>s)",
            n: deleted, s: seconds, k: statements.size, max: statements.max * 1000, med: statements.sort[statements.size / 2] * 1000,
            left: left.inspect, v: conn.select_value("SHOW server_version"))
