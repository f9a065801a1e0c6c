# frozen_string_literal: true

require "json"
require "set"
require "timeout"
require_relative "../support/child_ruby"
require_relative "../support/consumer_helpers"
require_relative "../support/consumer_child"

# Processes and threads: a preloading server (configure and publish in the parent, fork
# workers that publish and consume on their own connections), many threads publishing in
# one process, several consumer processes on one durable. Nothing hangs, nothing panics
# at exit, every event is handled.
RSpec.describe "Fork, threads and processes" do
  include ConsumerHelpers

  def root = File.expand_path("../..", __dir__)

  # Problems a native core shows at exit or across fork.
  def crash_signs(text)
    text.lines.grep(/panicked|\bpanic\b|\[BUG\]|fatal|Segmentation fault|SIGABRT|double free|Aborted/i)
  end

  # Runs a Ruby program (with -I lib), killing it and what it forked after `timeout`
  # seconds: [stdout, stderr, status].
  def run_ruby(args, timeout:) = ChildRuby.capture3(*args, timeout: timeout)

  it "works like a preloading server: parent configures and publishes, forked workers publish and consume on their own connections" do
    NatsServer.with_server do |server|
      env = "fork#{SecureRandom.hex(3)}"
      workers = 3
      per_worker = 40
      out, err, status = run_ruby([File.join(root, "spec/fixtures/preload_app.rb"), server.url, env, server.monitor_url,
                                   workers.to_s, per_worker.to_s], timeout: 90)
      expect(status.exitstatus).to eq(0), "preload app failed (#{status.inspect}):\n#{err}"
      expect(crash_signs(err)).to be_empty, err
      summary = JSON.parse(out.lines.last)
      puts "\n== preload/fork: #{summary.reject { |k, _| k == 'missing' }.inspect} =="
      expect(summary["missing"]).to eq([])
      expect(summary["handled"]).to eq(1 + workers * per_worker + 10)
      expect(summary["handled_by"].keys).to match_array(Array.new(workers) { |w| "worker-#{w}" }) # every worker consumed
      expect(summary["parent_missing"]).to eq([]) # and so did the parent, on its own durable
      expect(summary["statuses"]).to eq([0] * workers) # each stopped by SIGTERM and exited by itself
      expect(summary["stopped"]).to eq((0...workers).to_a)
      expect(summary["connections_named"]).to be >= workers + 1 # one connection per process
      expect(summary["parent_connected"]).to be(true)
    end
  end

  # Reply subjects must differ between workers forked from one process: if they shared
  # them, a worker could take a sibling's ack for its own publish (reported as stored when
  # it was not). Every ack must name the stored message it acknowledges.
  it "gives each forked worker its own reply subjects: every ack names that worker's own message" do
    script = <<~'RUBY'
      require "jetstream_bridge"
      require "json"
      require ARGV[2] # NatsApi: reads the stored message through a connection of its own
      JetstreamBridge.configure(nats_urls: ARGV[0], env: ARGV[1], app_name: "app", destination_app: "other")
      JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "parent") # the parent drives its connection first
      workers = Array.new(3) do |w|
        fork do
          # On the main thread, as a Puma worker would (it inherited the parent's state).
          client = JetstreamBridge::Connection.client
          subject = JetstreamBridge.config.source_subject
          wrong = Array.new(60) do |i|
            id = "w#{w}-#{i}"
            event = JetstreamBridge::Native::BuiltEvent.new(subject: subject, event_id: id, json: JSON.generate(event_id: id), headers: nil)
            ack = client.publish_event(event, JetstreamBridge::Event.defaults(JetstreamBridge.config))
            stored = NatsApi.get_message(ARGV[0], ack.stream, ack.seq)
            stored && stored[2]["Nats-Msg-Id"] == id ? nil : id
          rescue JetstreamBridge::Error => e
            "#{id}: #{e.message}"
          end.compact
          puts JSON.generate(worker: w, wrong_acks: wrong)
          exit!(wrong.empty? ? 0 : 1)
        end
      end
      statuses = workers.map { |pid| Process.wait2(pid)[1].exitstatus }
      puts JSON.generate(statuses: statuses)
    RUBY
    out, err, status = run_ruby(["-e", script, shared_server.url, "forkinbox#{SecureRandom.hex(3)}",
                                 File.expand_path("../support/nats_api.rb", __dir__)], timeout: 90)
    expect(status.exitstatus).to eq(0), err
    expect(out.lines.last).to eq(%({"statuses":[0,0,0]}\n)), out + err
  end

  it "lets a forked child exit at once (exit!, exit, or a raise) while the parent's connection is busy, without panics" do
    script = <<~'RUBY'
      require "jetstream_bridge"
      require "logger"
      JetstreamBridge.configure(nats_urls: ARGV[0], env: ARGV[1], app_name: "app", destination_app: "other",
                                logger: Logger.new($stderr, level: Logger::WARN))
      JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "p0")
      busy = Thread.new { 200.times { |i| JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "bg-#{i}") } }
      codes = [
        fork { JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "c-exit"); exit 0 },
        fork { JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "c-exit!"); exit!(0) },
        fork { exit 0 },                                      # never touched the bridge
        fork { JetstreamBridge.connected?; JetstreamBridge.health_check; exit 0 },
        fork { JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "c-raise"); raise "boom" }
      ].map { |pid| Process.wait2(pid)[1].exitstatus }
      busy.join
      puts codes.inspect
    RUBY
    out, err, status = run_ruby(["-e", script, shared_server.url, "forkexit#{SecureRandom.hex(3)}"], timeout: 60)
    expect(status.exitstatus).to eq(0), err
    expect(out.strip).to eq("[0, 0, 0, 0, 1]"), err
    expect(crash_signs(err.lines.reject { |l| l.include?("boom") }.join)).to be_empty, err
  end

  it "stores every event once when many Ruby threads publish on one process at once" do
    configure_bridge
    threads = 16
    per_thread = 40
    started = Queue.new
    go = Queue.new
    workers = Array.new(threads) do |t|
      Thread.new do
        started << t
        go.pop
        if t.even?
          Array.new(per_thread) do |i|
            JetstreamBridge.publish(event_type: "user.created", payload: { t: t, i: i }, event_id: "t#{t}-#{i}")
          end
        else
          events = Array.new(per_thread) { |i| { event_type: "user.created", payload: { t: t, i: i }, event_id: "t#{t}-#{i}" } }
          JetstreamBridge.publish_batch(events).tap { |r| raise "batch failed: #{r.failed.first.inspect}" unless r.success? }
        end
      end
    end
    threads.times { started.pop }
    threads.times { go << true }
    expect(workers.map { |w| w.join(60) }).to all(be_a(Thread))
    workers.each(&:value) # re-raises a thread's error
    ids = stream_messages.map { |_, _, headers| headers["Nats-Msg-Id"] }
    expected = Array.new(threads) { |t| Array.new(per_thread) { |i| "t#{t}-#{i}" } }.flatten
    expect(ids.size).to eq(expected.size)
    expect(ids).to match_array(expected)
  end

  it "publishes a batch from threads that race to make the first connection (the stream exists before any of them publishes)" do
    10.times do
      configure_bridge
      go = Queue.new
      threads = Array.new(8) do |t|
        Thread.new do
          go.pop
          JetstreamBridge.publish_batch(Array.new(5) { |i| { event_type: "user.created", payload: { i: i }, event_id: "r#{t}-#{i}" } })
        end
      end
      8.times { go << true }
      failed = threads.flat_map { |th| th.value.failed }
      expect(failed).to eq([])
    end
  end

  it "handles every event once across several consumer processes on one durable" do
    configure_bridge(ack_wait: "5s")
    ids = publish_incoming(300)
    children = Array.new(3) do
      ConsumerChild.new("NATS_URL" => shared_server.url, "JSB_ENV" => bridge_env, "ACK_WAIT" => "5s", "HANDLER_SLEEP" => "0.002")
    end
    begin
      children.each { |c| c.wait_for(/\Aready\z/) }
      done = lambda do
        children.flat_map { |c| c.output.grep(/\Adone /).map { |l| [l.split[1], c.pid] } }
      end
      eventually(timeout: 60, interval: 0.1) { done.call.map(&:first).to_set.superset?(ids.to_set) }
      handled = done.call
      per_child = handled.group_by(&:last).transform_values(&:size)
      duplicates = handled.size - handled.map(&:first).uniq.size
      puts "\n== 3 consumer processes on one durable: #{ids.size} events, handled per process #{per_child.values.inspect}, #{duplicates} duplicates =="
      expect(handled.map(&:first).uniq).to match_array(ids)
      expect(duplicates).to eq(0) # no event handled by two processes (nor twice by one)
      expect(per_child.size).to be >= 2 # the work was shared
      children.each { |c| c.signal("TERM") }
      statuses = children.map { |c| c.wait_exit(20) }
      expect(statuses.map { |s| s&.exitstatus }).to eq([0, 0, 0]), children.map(&:stderr).join("\n---\n")
      children.each do |c|
        expect(c.output).to include("run returned")
        expect(crash_signs(c.stderr)).to be_empty, c.stderr
      end
      eventually(timeout: 10) { consumer_info["num_ack_pending"].zero? }
      expect(consumer_info.dig("ack_floor", "stream_seq")).to eq(300)
    ensure
      children.each(&:kill!)
    end
  end

  # Not a fork case, but the same per-process runtime: when it cannot be made, the app
  # gets an exception it can rescue, not Ruby's fatal (which no rescue catches).
  it "raises JetstreamBridge::Error, not fatal, when the process has no file descriptor left for the runtime" do
    script = <<~'RUBY'
      require "jetstream_bridge"
      JetstreamBridge.configure(nats_urls: ARGV[0], env: "nofd", app_name: "a", destination_app: "b")
      used = Dir.children("/proc/self/fd").size
      Process.setrlimit(:NOFILE, used - 1, Process.getrlimit(:NOFILE)[1]) # none left
      begin
        JetstreamBridge.publish(event_type: "a.b")
      rescue StandardError => e
        puts "rescued #{e.class}: #{e.message}"
      end
    RUBY
    out, err, status = run_ruby(["-e", script, shared_server.url], timeout: 30)
    expect(status.exitstatus).to eq(0), err
    expect(out).to match(/rescued JetstreamBridge::Error: could not start the native runtime: Too many open files/)
    expect(crash_signs(err)).to be_empty, err
  end
end
