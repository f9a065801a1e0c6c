# frozen_string_literal: true

require_relative "../support/child_ruby"

# A process whose main thread is its only Ruby thread (a script, a rake task): the core's
# waits must neither start a helper Ruby thread per call (what Ruby does for an unblock
# function that is not async-signal-safe) nor stop answering signals. Each example runs
# in its own Ruby process.
RSpec.describe "JetstreamBridge in a single-threaded process" do
  def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

  # Runs `script` with the bridge configured for `url`; yields stdin, stdout and the pid.
  def ruby_child(script, url)
    setup = <<~RUBY
      require "jetstream_bridge"
      require "logger"
      $stdout.sync = true
      JetstreamBridge.configure(nats_urls: ARGV[0], env: ARGV[1], app_name: "app", destination_app: "other",
                                request_timeout: "10s", publish_attempts: 1, logger: Logger.new(IO::NULL))
    RUBY
    ChildRuby.popen3("-e", setup + script, url, "t#{SecureRandom.hex(4)}") do |stdin, stdout, stderr, wait|
      yield stdin, stdout, wait.pid
      stdin.close
      [stdout.read, stderr.read, wait.value]
    end
  end

  it "starts no Ruby thread around its calls (only the connection's event watcher, once)" do
    script = <<~RUBY
      started = []
      # Enabled without a block: with one, Ruby 3.2+ traces the enabling thread only.
      trace = TracePoint.new(:thread_begin) { started << Thread.current }
      trace.enable
      20.times { |i| JetstreamBridge.publish(event_type: "user.created", payload: { id: i }) }
      # The watcher names itself once running (5 s at most, then the line shows what is there).
      50.times { break if started.any? && started.all?(&:name); sleep 0.1 }
      puts "during publishes: \#{started.map(&:name).inspect}"
      Thread.new {}.join
      puts "after one Thread.new: \#{started.size}"
      trace.disable
    RUBY
    out, err, status = ruby_child(script, shared_server.url) { |*| nil }
    expect(status.exitstatus).to eq(0), err
    # The second line shows the TracePoint does see threads start.
    expect(out).to eq("during publishes: [\"jetstream_bridge-events\"]\nafter one Thread.new: 2\n")
  end

  it "lets SIGINT interrupt a blocked publish at once, while a trap that only records a signal does not end it" do
    NatsServer.with_server do |server|
      script = <<~RUBY
        usr1 = false
        trap("USR1") { usr1 = true }
        JetstreamBridge.publish(event_type: "user.created", payload: {})
        puts "connected"
        $stdin.gets # the server is stopped now
        begin
          puts "publishing"
          JetstreamBridge.publish(event_type: "user.created", payload: {})
          puts "published"
        rescue Interrupt
          puts "interrupted, usr1 seen: \#{usr1}"
        end
      RUBY
      timings = {}
      out, err, status = ruby_child(script, server.url) do |stdin, stdout, pid|
        expect(stdout.gets).to eq("connected\n")
        server.stop
        stdin.puts "go"
        expect(stdout.gets).to eq("publishing\n")
        sleep 0.5 # the scenario: signals reach a publish blocked in the core (nothing outside shows it there)
        Process.kill("USR1", pid)
        sleep 0.5 # the window in which a publish the trap ended would have written its line
        # Still in the publish: nothing more written, stdout still open.
        timings[:blocked_after_usr1] = IO.select([stdout], nil, nil, 0).nil?
        timings[:interrupted_at] = monotonic
        Process.kill("INT", pid)
      end
      expect(timings[:blocked_after_usr1]).to be(true)
      expect(monotonic - timings[:interrupted_at]).to be < 2
      expect(out.lines.last).to eq("interrupted, usr1 seen: true\n"), "stdout: #{out}\nstderr: #{err}"
      expect(status.exitstatus).to eq(0)
    end
  end
end
