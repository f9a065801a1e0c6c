# frozen_string_literal: true

require "json"
require "socket"
require "timeout"
require_relative "../support/child_ruby"

# Faults and concurrency: server down, restarted, killed; Thread#kill and Timeout of a
# blocked publish; fork; threads publishing at once. Fault tests use their own server.
RSpec.describe "JetstreamBridge resilience" do
  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  def stored_ids(stream = JetstreamBridge.config.stream_name)
    stream_messages(stream).map { |_, _, headers| headers["Nats-Msg-Id"] }
  end

  def event(id)
    { event_type: "user.created", payload: { id: id }, event_id: id }
  end

  context "with a server that goes away" do
    around do |example|
      NatsServer.with_server do |server|
        @server = server
        example.run
      end
    end

    it "raises within a bounded time while the server is down" do
      configure_bridge(server: @server, request_timeout: "1s", publish_attempts: 2)
      expect(JetstreamBridge.publish(**event("before"))).to be(true)
      @server.stop

      error = nil
      took = elapsed do
        JetstreamBridge.publish(**event("while-down"))
      rescue StandardError => e
        error = e
      end
      expect(error).to be_a(JetstreamBridge::ConnectionError).or be_a(JetstreamBridge::PublishTimeoutError)
      expect(took).to be < 4
    end

    it "publishes again after the server restarts, without reconfiguring" do
      configure_bridge(server: @server, request_timeout: "1s", publish_attempts: 2)
      config = JetstreamBridge.config
      JetstreamBridge.publish(**event("before"))
      @server.stop
      expect { JetstreamBridge.publish(**event("down")) }.to raise_error(JetstreamBridge::Error)

      @server.start
      eventually(timeout: 20, interval: 0.2) do
        JetstreamBridge.publish(**event("after"))
      rescue JetstreamBridge::Error
        false
      end
      expect(JetstreamBridge.config).to be(config)
      expect(stored_ids).to include("before", "after")
      expect(stored_ids.count("after")).to eq(1)
    end

    it "stores a publish retried across a server restart once (Nats-Msg-Id)" do
      configure_bridge(server: @server, request_timeout: "1s", publish_attempts: 6, retry_strategy: :linear)
      JetstreamBridge.publish(**event("before"))
      @server.stop
      restarter = Thread.new { sleep 0.7; @server.start } # the outage
      expect(JetstreamBridge.publish(**event("across-restart"))).to be(true)
      restarter.join
      # Acked after it: the server has read whatever the client still had buffered before.
      expect(JetstreamBridge.publish(**event("marker"))).to be(true)
      expect(stored_ids.count("across-restart")).to eq(1)
    end

    it "retries the event the core built, with the event_id it generated" do
      errors = []
      strategy = Object.new
      strategy.define_singleton_method(:delay_for) { |_attempt, error| errors << error; 0.3 }
      configure_bridge(server: @server, request_timeout: "1s", publish_attempts: 8, retry_strategy: strategy)
      JetstreamBridge.publish(**event("before"))
      @server.stop
      restarter = Thread.new { sleep 0.7; @server.start } # the outage
      expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: "generated-id" })).to be(true)
      restarter.join
      # The first failure came from the one-call publish and carries the event it built.
      unsent = errors.first.unsent_event
      subject, event_id, json = unsent.subject, unsent.event_id, unsent.json
      expect([subject, JSON.parse(json)["event_id"]]).to eq([JetstreamBridge.config.source_subject, event_id])
      expect(json.encoding).to eq(Encoding::UTF_8)
      expect(stored_ids - ["before"]).to eq([event_id])
    end

    it "publishes again after the server is killed and restarted" do
      configure_bridge(server: @server, request_timeout: "1s", publish_attempts: 1)
      JetstreamBridge.publish(**event("before"))
      @server.restart(kill: true)
      eventually(timeout: 20, interval: 0.2) do
        JetstreamBridge.publish(**event("after-kill"))
      rescue JetstreamBridge::Error
        false
      end
      expect(stored_ids).to include("before", "after-kill")
      expect(JetstreamBridge.connected?).to be(true)
    end

    it "lets Thread#kill end a publish blocked on a stopped server promptly" do
      configure_bridge(server: @server, request_timeout: "10s", publish_attempts: 1)
      JetstreamBridge.publish(**event("before"))
      @server.stop

      thread = Thread.new { JetstreamBridge.publish(**event("blocked")) }
      thread.report_on_exception = false
      sleep 0.5 # the window a blocked call must outlast (it has no outside sign of being in the wait)
      expect(thread).to be_alive # it is blocked waiting for the ack
      killed_at = monotonic
      thread.kill
      expect(thread.join(1)).to be(thread)
      expect(monotonic - killed_at).to be < 1
    end

    it "lets Timeout interrupt a publish blocked on a stopped server" do
      configure_bridge(server: @server, request_timeout: "10s", publish_attempts: 1)
      JetstreamBridge.publish(**event("before"))
      @server.stop
      took = elapsed do
        expect { Timeout.timeout(0.5) { JetstreamBridge.publish(**event("blocked")) } }.to raise_error(Timeout::Error)
      end
      expect(took).to be < 1.5
    end

    it "reports every event of a batch sent while the server is down as failed, without raising" do
      configure_bridge(server: @server, request_timeout: "1s")
      JetstreamBridge.publish(**event("before"))
      @server.stop
      result = nil
      took = elapsed { result = JetstreamBridge.publish_batch(Array.new(100) { |i| event("down-#{i}") }) }
      expect(took).to be < 5
      expect(result.published).to eq(0)
      expect(result.failed.map { |f| f[1] }).to eq(Array.new(100) { |i| "down-#{i}" })
      expect(result.failed.map { |f| f[2] }.uniq).to eq(["PublishTimeoutError"]).or eq(["ConnectionError"])
    end

    it "lets Thread#kill end a blocked publish_batch promptly" do
      configure_bridge(server: @server, request_timeout: "10s")
      JetstreamBridge.publish(**event("before"))
      @server.stop
      thread = Thread.new { JetstreamBridge.publish_batch(Array.new(50) { |i| event("k-#{i}") }) }
      thread.report_on_exception = false
      sleep 0.5 # the window a blocked call must outlast (it has no outside sign of being in the wait)
      expect(thread).to be_alive
      thread.kill
      expect(thread.join(1)).to be(thread)
    end

    it "keeps other Ruby threads running while a publish waits (GVL released)" do
      configure_bridge(server: @server, request_timeout: "2s", publish_attempts: 1)
      JetstreamBridge.publish(**event("before"))
      @server.stop
      ticks = 0
      ticker = Thread.new { loop { ticks += 1; sleep 0.01 } } # counts 100 ticks a second unless starved
      begin
        expect { JetstreamBridge.publish(**event("blocked")) }.to raise_error(JetstreamBridge::Error)
      ensure
        ticker.kill.join
      end
      expect(ticks).to be > 50 # about 200 in 2 s if the ticker was never starved
    end
  end

  it "raises ConnectionError quickly when no server listens on the port" do
    dead = NatsServer.free_ports(1, exclude: [shared_server.port]).first
    configure_bridge(server: "nats://127.0.0.1:#{dead}")
    error = nil
    took = elapsed do
      JetstreamBridge.publish(**event("nowhere"))
    rescue StandardError => e
      error = e
    end
    expect(error).to be_a(JetstreamBridge::ConnectionError)
    expect(error.message).to include(dead.to_s)
    expect(took).to be < 3
    expect(JetstreamBridge.connected?).to be(false)
  end

  context "with a server that accepts connections but never answers" do
    around do |example|
      listener = TCPServer.new("127.0.0.1", 0)
      accepted = []
      acceptor = Thread.new { loop { accepted << listener.accept } }
      @silent_url = "nats://127.0.0.1:#{listener.addr[1]}"
      example.run
    ensure
      acceptor&.kill&.join
      accepted&.each(&:close)
      listener&.close
    end

    it "gives up connecting after connect_timeout" do
      configure_bridge(server: @silent_url, connect_timeout: "1s", publish_attempts: 1)
      took = elapsed do
        expect { JetstreamBridge.publish(**event("x")) }.to raise_error(JetstreamBridge::ConnectionError)
      end
      expect(took).to be_between(0.8, 3)
    end

    it "lets Thread#kill end a connect in progress, and a later publish try again" do
      configure_bridge(server: @silent_url, connect_timeout: "10s", publish_attempts: 1)
      thread = Thread.new { JetstreamBridge.publish(**event("x")) }
      thread.report_on_exception = false
      sleep 0.5 # the window a blocked call must outlast (it has no outside sign of being in the wait)
      expect(thread).to be_alive
      thread.kill
      expect(thread.join(1)).to be(thread)
      # The connection lock was released: another caller can connect (to a real server).
      JetstreamBridge.config.nats_urls = shared_server.url
      expect(Timeout.timeout(5) { JetstreamBridge.publish(**event("after-kill")) }).to be(true)
    end
  end

  it "raises a clear TopologyError when the server has no JetStream, and health is false" do
    NatsServer.with_server(jetstream: false) do |server|
      configure_bridge(server: server, request_timeout: "1s")
      expect { JetstreamBridge.publish(**event("x")) }.to raise_error(JetstreamBridge::TopologyError, /JetStream/)
      expect(JetstreamBridge.health_check).to include(healthy: false)
    end
  end

  describe "fork" do
    before { configure_bridge }

    it "lets a forked child publish after the parent did, and the parent afterwards" do
      expect(JetstreamBridge.publish(**event("parent-1"))).to be(true)
      pid = fork do
        ok = JetstreamBridge.publish(**event("child")) == true
        Process.exit!(ok ? 0 : 1)
      rescue Exception => e # rubocop:disable Lint/RescueException
        warn "child: #{e.class}: #{e.message}"
        Process.exit!(2)
      end
      _, status = Process.wait2(pid)
      expect(status.exitstatus).to eq(0)
      expect(JetstreamBridge.publish(**event("parent-2"))).to be(true)
      expect(stored_ids).to eq(%w[parent-1 child parent-2])
    end

    it "lets children publish while other threads of the parent are publishing" do
      JetstreamBridge.publish(**event("warm-up"))
      stop = false
      publishers = Array.new(2) do |t|
        Thread.new do
          n = 0
          until stop
            JetstreamBridge.publish(**event("bg-#{t}-#{n}"))
            n += 1
          end
          n
        end
      end
      statuses = Array.new(10) do |n|
        pid = fork do
          ok = Timeout.timeout(10) { JetstreamBridge.publish(**event("child-#{n}")) } == true
          Process.exit!(ok ? 0 : 1)
        rescue Exception # rubocop:disable Lint/RescueException
          Process.exit!(2)
        end
        Process.wait2(pid)[1].exitstatus
      end
      stop = true
      expect(publishers.map(&:value)).to all(be > 0)
      expect(statuses).to all(eq(0))
      expect(stored_ids).to include(*Array.new(10) { |n| "child-#{n}" })
    end

    it "lets a child exit normally (finalizers and at_exit run) in a separate program" do
      script = <<~RUBY
        require "jetstream_bridge"
        require "logger"
        JetstreamBridge.configure(nats_urls: ARGV[0], env: ARGV[1], app_name: "app", destination_app: "other",
                                  logger: Logger.new(IO::NULL))
        JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "p1")
        pid = fork { JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "c1") }
        Process.wait(pid)
        abort("child exited with \#{$?.inspect}") unless $?.success?
        JetstreamBridge.publish(event_type: "user.created", payload: {}, event_id: "p2")
        puts "done"
      RUBY
      out, status = ChildRuby.capture("-e", script, shared_server.url, bridge_env)
      expect(status.exitstatus).to eq(0), out
      expect(out).to eq("done\n")
      expect(stored_ids).to eq(%w[p1 c1 p2])
    end
  end

  describe "threads" do
    before { configure_bridge }

    PER_THREAD = 1_000

    it "lets two threads publish at once, both making progress" do
      done = Array.new(2) { [] }
      threads = Array.new(2) do |t|
        Thread.new do
          # Enough events that a thread started late under load still overlaps the other.
          PER_THREAD.times do |i|
            JetstreamBridge.publish(**event("t#{t}-#{i}"))
            done[t] << monotonic
          end
        end
      end
      expect(threads.map { |th| th.join(30) }).to all(be_a(Thread))
      expect(done.map(&:size)).to eq([PER_THREAD, PER_THREAD])
      # Interleaved: each thread finished its first event before the other finished its last.
      expect(done[0].first).to be < done[1].last
      expect(done[1].first).to be < done[0].last
      ids = stored_ids
      expect(ids.size).to eq(2 * PER_THREAD)
      expect(ids).to match_array(Array.new(2) { |t| Array.new(PER_THREAD) { |i| "t#{t}-#{i}" } }.flatten)
    end

    it "connects once when many threads publish first at the same time" do
      threads = Array.new(8) { |t| Thread.new { JetstreamBridge.publish(**event("first-#{t}")) } }
      expect(threads.map(&:value)).to all(be(true))
      expect(stored_ids.size).to eq(8)
      expect(log_output.scan(/connected to nats/).size).to eq(1)
    end
  end
end
