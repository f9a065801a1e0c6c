# frozen_string_literal: true

# Shared by the benchmarks: a fresh local nats-server, the raw async-nats reference
# program (bench/reference), and timing helpers. Benchmarks print figures; they assert
# nothing.
require "json"
require "logger"
require "open3"
require "jetstream_bridge"
require_relative "../spec/support/nats_server"

# Figures of the test command's build (no whole-program optimization) would mislead.
unless JetstreamBridge::Native::BUILD_PROFILE == "release"
  abort "bench: lib/ holds a #{JetstreamBridge::Native::BUILD_PROFILE} build (bin/test's); run `rake compile` first"
end

module Bench
  ROOT = File.expand_path("..", __dir__)
  REFERENCE = File.join(ROOT, "target", "release", "jetstream_bridge_reference")

  # The payload the publish and consume benchmarks send (the reference builds the same):
  # twelve fields of every JSON type, non-ASCII, quotes, a nested Hash and an Array, and
  # a `bio` of BIO_BYTES characters (~1 KB of JSON in all).
  BIO_BYTES = 700

  module_function

  def payload(id, bio = "x" * BIO_BYTES)
    { id: id, email: "someone@example.com", name: "Zoë \"Ada\" O'Brien", bio: bio, age: 37, score: 4.75,
      active: true, deleted_at: nil, locale: "pl-PL",
      address: { city: "Kraków", zip: "30-001", lines: ["ul. Długa 1", "m. 2"] }, tags: %w[a b c],
      signup: "2025-01-01T00:00:00Z" }
  end

  def event(id, bio = "x" * BIO_BYTES) = { event_type: "user.updated", resource_type: "user", payload: payload(id, bio) }

  # CPU seconds this process (every thread, the core's included) and its waited-for
  # children (the reference) have used so far.
  def cpu = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)

  def children_cpu = Process.times.then { |t| t.cutime + t.cstime }

  def server
    @server ||= NatsServer.new.start.tap { |s| at_exit { s.cleanup } }
  end

  def build_reference!
    system({ "CARGO_TARGET_DIR" => File.join(ROOT, "target") }, "cargo", "build", "--release", "--quiet",
           "--manifest-path", File.join(ROOT, "bench", "reference", "Cargo.toml"), exception: true)
  end

  # Tokio's runtimes the reference runs on (its REFERENCE_RUNTIME): one thread driving
  # everything, or two workers. Which is faster depends on the workload, and the bridge is
  # held to the faster (see paired_row).
  RUNTIMES = %w[current_thread multi_thread].freeze

  # Runs the reference program on one runtime; returns events per second. In the
  # arguments, "%{runtime}" becomes the runtime's name (a consumer durable per run).
  def reference(runtime, *args)
    argv = args.map { |arg| arg.to_s.gsub("%{runtime}", runtime) }
    out, status = Open3.capture2({ "REFERENCE_RUNTIME" => runtime }, REFERENCE, *argv)
    raise "reference (#{runtime}) failed: #{out}" unless status.success?

    JSON.parse(out.lines.last)["rate"]
  end

  # Paired rounds on one machine: each round measures the bridge (the block, given the
  # round, returns events per second) and the reference (`reference_args` for the round)
  # on every runtime, the bridge first in even rounds and last in odd ones, so neither
  # side always runs right after the other. Returns [[bridge, {runtime => rate}], ...].
  # With `events:` (events per run) the CPU time of each side is kept too, as
  # microseconds per event ({ "bridge" => us, runtime => us }), in @cpu_per_event.
  def paired_rounds(rounds, reference_args, events: nil)
    @cpu_per_event = Hash.new { |h, k| h[k] = [] }
    Array.new(rounds) do |round|
      bridge = nil
      rates = {}
      steps = [-> { bridge = measured("bridge", events, :cpu) { yield(round) } },
               lambda do
                 RUNTIMES.each do |runtime|
                   rates[runtime] = measured(runtime, events, :children_cpu) { reference(runtime, *reference_args.call(round)) }
                 end
               end]
      (round.even? ? steps : steps.reverse).each(&:call)
      [bridge, rates]
    end
  end

  def measured(side, events, clock)
    before = public_send(clock)
    result = yield
    @cpu_per_event[side] << (public_send(clock) - before) * 1e6 / events if events
    result
  end

  # "CPU per event: bridge N us, reference N us (runtime), ..." for the last paired_rounds.
  def cpu_row
    parts = @cpu_per_event.map { |side, values| format("%s %.1f us", side, median(values)) }
    "  CPU per event (median): #{parts.join(', ')}"
  end

  def configure(env:, app: "bench", dest: "sink", **settings)
    JetstreamBridge.reset!
    JetstreamBridge.configure do |c|
      c.nats_urls = server.url
      c.env = env
      c.app_name = app
      c.destination_app = dest
      c.logger = Logger.new($stderr, level: ENV["LOGLEVEL"] ? Logger::DEBUG : Logger::WARN)
      settings.each { |k, v| c.public_send("#{k}=", v) }
    end
    JetstreamBridge.ensure_topology!
  end

  # Events per second of the block doing `count` events.
  def rate(count)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    yield
    count / (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started)
  end

  # Events per second one consumer handles with a no-op handler, as "bench" consuming
  # "producer", measured from the first to the last handled event: stop! then waits up
  # to a second for the pull in flight to expire, which is shutdown, not throughput.
  def consume_rate(env, total, durable, **settings)
    configure(env: env, app: "bench", dest: "producer", duplicate_window: "1s", batch_size: 256, **settings)
    seen = 0
    started = finished = nil
    consumer = JetstreamBridge.subscribe(durable_name: durable, batch_size: 256) do |_event, _subject, _deliveries|
      started ||= Process.clock_gettime(Process::CLOCK_MONOTONIC)
      seen += 1
      next if seen < total

      finished = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      consumer.stop!
    end
    consumer.run!
    (total - 1) / (finished - started)
  end

  # Microseconds one call of the block takes (the mean of `calls`).
  def per_call_us(calls)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    calls.times { yield }
    (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1e6 / calls
  end

  def rss_kb
    File.read("/proc/self/status")[/VmRSS:\s+(\d+)/, 1].to_i
  end

  def median(values) = values.sort[values.size / 2]

  # The reference runtime with the higher median rate in paired rounds (paired_rounds).
  def faster_runtime(pairs) = RUNTIMES.max_by { |rt| median(pairs.map { |_, reference| reference[rt] }) }

  # A row for paired rounds (from paired_rounds): the bridge against the reference
  # runtime with the higher median rate, as median rates and the median of the per-round
  # ratios.
  def paired_row(name, pairs, target)
    ratio_on = ->(rt) { median(pairs.map { |bridge, reference| bridge / reference[rt] }) }
    runtime = faster_runtime(pairs)
    ratios = pairs.map { |bridge, reference| bridge / reference[runtime] }
    ratio = median(ratios)
    others = (RUNTIMES - [runtime]).map { |rt| format("%.2fx against %s", ratio_on.(rt), rt) }.join(", ")
    format("%-34s %12.0f/s %12.0f/s %8.2fx   (target >= %.2fx)%s   reference on %s; rounds: %s (%s)", name,
           median(pairs.map(&:first)), median(pairs.map { |_, reference| reference[runtime] }), ratio, target,
           ratio >= target ? "" : "  BELOW TARGET", runtime, ratios.map { |r| format("%.2f", r) }.join(" "), others)
  end

  def header
    format("%-34s %14s %14s %9s", "workload", "bridge", "raw Rust", "ratio")
  end
end
