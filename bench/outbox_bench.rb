# frozen_string_literal: true

# Outbox and inbox throughput beside plain publish and consume, in the same run, against
# one local nats-server, on SQLite (a file, Rails 6.1's defaults) and on PostgreSQL
# (127.0.0.1:5432, a fresh database), with ~1 KB events:
#   - plain publish (acked, one at a time) and publish_batch (256 acks in flight);
#   - outbox publish: one event per transaction, 100 events per transaction, and outside a
#     transaction (row written, published, marked sent), with outbox_delivery :inline and
#     :background (the rate is what the publishing loop sees; the delivery thread's drain
#     after the loop is timed apart and printed);
#   - outbox relay: pending rows sent by OutboxRelay#flush (500-row batches);
#   - consume with a no-op handler, without and with the inbox.
#   ruby -Ilib bench/outbox_bench.rb [count]
require_relative "support"
require_relative "../spec/support/active_record_db"

count = Integer(ARGV[0] || 5_000)
batch_count = count * 4
data = "x" * 900
event = ->(i) { { event_type: "bench.created", payload: { id: i, data: data } } }
rows = []

def best_of(runs = 2)
  Array.new(runs) { yield }.max
end

def row(name, rate, baseline)
  format("%-46s %10.0f/s  %6.2fx of %s", name, rate, rate / baseline[1], baseline[0])
end

# --- plain publish ------------------------------------------------------------------------
Bench.configure(env: "obplain")
200.times { |i| JetstreamBridge.publish(**event.call(i)) }
plain = best_of { Bench.rate(count) { count.times { |i| JetstreamBridge.publish(**event.call(i)) } } }
plain_batch = best_of do
  events = Array.new(batch_count) { |i| event.call(i) }
  Bench.rate(batch_count) { raise "failed" unless JetstreamBridge.publish_batch(events).success? }
end
base_serial = ["plain publish", plain]
base_batch = ["publish_batch", plain_batch]
rows << format("%-46s %10.0f/s", "plain publish, one at a time (acked)", plain)
rows << format("%-46s %10.0f/s", "plain publish_batch, 256 acks in flight", plain_batch)

# --- plain consume ------------------------------------------------------------------------
def fill_incoming(env, total, data)
  Bench.configure(env: env, app: "producer", dest: "bench", duplicate_window: "1s")
  (0...total).each_slice(10_000) do |slice|
    result = JetstreamBridge.publish_batch(slice.map { |i| { event_type: "bench.created", payload: { id: i, data: data } } })
    raise "publish failed: #{result.failed.first(2)}" unless result.success?
  end
end

fill_incoming("obcons", count, data)
plain_consume = Bench.consume_rate("obcons", count, "plain")
base_consume = ["plain consume", plain_consume]
rows << format("%-46s %10.0f/s", "plain consume (no-op handler)", plain_consume)

# --- per database ---------------------------------------------------------------------------
[[:sqlite, "SQLite"], [:postgres, "PostgreSQL"]].each do |kind, label|
  db = ActiveRecordDb.public_send(kind).activate!
  outbox = JetstreamBridge::OutboxEvent
  Bench.configure(env: "ob#{kind}", use_outbox: true)
  JetstreamBridge::Outbox.resume!
  db.truncate!

  # What the database alone costs: a transaction writing one row of the same size.
  ActiveRecord::Base.connection.create_table(:bench_rows, force: true) { |t| t.text :body }
  bench_row = Class.new(ActiveRecord::Base) { self.table_name = "bench_rows" }
  body = JetstreamBridge::Event.build(event.call(0)).json
  modes = %i[inline background]
  drains = Hash.new { |h, k| h[k] = [] }
  # The loop's rate in `mode`; the drain after it (background delivery, marks) apart.
  timed = lambda do |mode, n, &loop|
    JetstreamBridge.configure(outbox_delivery: mode)
    rate = Bench.rate(n, &loop)
    started = JetstreamBridge::Background.monotonic
    raise "outbox not drained" unless JetstreamBridge::Outbox.flush_marks(timeout: 60)

    drains[mode] << JetstreamBridge::Background.monotonic - started
    rate
  end
  # Paired rounds (the database's rate drifts with the disk): the ratio is the median of
  # each round's outbox rate over the same round's database-alone rate.
  rounds = Array.new(3) do
    [Bench.rate(count) { count.times { ActiveRecord::Base.transaction { bench_row.create!(body: body) } } }] +
      modes.map { |mode| timed.(mode, count) { count.times { |i| ActiveRecord::Base.transaction { JetstreamBridge.publish(**event.call(i)) } } } }
  end
  db_only = Bench.median(rounds.map(&:first))
  per_txn = modes.each_with_index.to_h { |mode, m| [mode, Bench.median(rounds.map { |r| r[m + 1] })] }
  ratios = modes.each_with_index.to_h { |mode, m| [mode, rounds.map { |r| r[m + 1] / r[0] }] }
  raise "outbox rows not sent" unless outbox.where.not(status: "sent").count.zero?

  hundred = modes.to_h do |mode|
    [mode, best_of do
      timed.(mode, batch_count) do
        (batch_count / 100).times do |t|
          ActiveRecord::Base.transaction { 100.times { |i| JetstreamBridge.publish(**event.call(t * 100 + i)) } }
        end
      end
    end]
  end
  # The database's own ceiling for 100 events per transaction: the outbox table's rows for
  # the same events, as one pre-built multi-row INSERT per transaction (no Ruby building
  # at all), run before the outbox's rows are gone (same table size).
  t = JetstreamBridge::Outbox.table
  now = Time.now
  hundred_sql = Array.new(batch_count / 100) do |n|
    t.insert_sql(Array.new(100) do |i|
      t.present("event_id" => "ceiling-#{n}-#{i}", "subject" => "s", "payload" => body, "headers" => "{}", "status" => "sent",
                "attempts" => 0, "enqueued_at" => now, "created_at" => now, "updated_at" => now)
    end)
  end
  db_hundred = Bench.rate(batch_count) { hundred_sql.each { |sql| ActiveRecord::Base.transaction { t.connection.execute(sql) } } }
  no_txn = modes.to_h { |mode| [mode, best_of { timed.(mode, count) { count.times { |i| JetstreamBridge.publish(**event.call(i)) } } }] }
  JetstreamBridge.configure(outbox_delivery: :inline)
  raise "outbox rows not sent" unless outbox.where.not(status: "sent").count.zero?

  relay = best_of do
    db.truncate!
    now = Time.now
    pending = Array.new(batch_count) do |i|
      built = JetstreamBridge::Event.build(event.call(i))
      { event_id: built.event_id, subject: built.subject, payload: JSON.parse(built.json), headers: {}, status: "pending",
        attempts: 0, enqueued_at: now, created_at: now, updated_at: now }
    end
    pending.each_slice(5_000) { |slice| outbox.insert_all!(slice) }
    Bench.rate(batch_count) do
      result = JetstreamBridge::OutboxRelay.new(batch_size: 500).flush
      raise "relay sent #{result.sent}" unless result.sent == batch_count
    end
  end

  db.truncate!
  fill_incoming("obin#{kind}", count, data)
  inbox = Bench.consume_rate("obin#{kind}", count, "inbox", use_inbox: true)
  raise "inbox rows missing" unless JetstreamBridge::InboxEvent.where(status: "processed").count == count

  rows << ""
  rows << "#{label}:"
  rows << format("%-46s %10.0f/s", "  (database alone: 1-row transaction, no event)", db_only)
  { inline: 0.70, background: 0.90 }.each do |mode, target|
    rows << format("%-46s %10.0f/s  %6.2fx of the database alone (target >= %.2fx; rounds: %s)",
                   "  outbox publish, 1 event per transaction, #{mode}", per_txn[mode], Bench.median(ratios[mode]), target,
                   ratios[mode].map { |ratio| format("%.2f", ratio) }.join(" "))
  end
  rows << format("%-46s %10.0f/s", "  (database alone: the same rows, 100 per INSERT)", db_hundred)
  rows << format("%-46s %10.0f/s  %6.2fx of that", "  outbox publish, 100 events per transaction, inline", hundred[:inline],
                 hundred[:inline] / db_hundred)
  rows << format("%-46s %10.0f/s  %6.2fx of that (target >= 20,000/s)", "  outbox publish, 100 events per transaction, background",
                 hundred[:background], hundred[:background] / db_hundred)
  modes.each { |mode| rows << row("  outbox publish, outside a transaction, #{mode}", no_txn[mode], base_serial) }
  rows << format("  (background drain after each loop, longest: %.2f s)", drains[:background].max)
  rows << row("  outbox relay (500-row batches)", relay, base_batch)
  rows << "#{row('  consume with inbox (no-op handler)', inbox, base_consume)}  (target >= 5,000/s)"
end

puts "nats-server #{Bench.server.version}, ~1 KB events, #{count} events per serial run (#{batch_count} batched), best of 2 (median of 3 paired rounds against the database alone)"
puts rows
