# frozen_string_literal: true

require "json"
require_relative "../support/child_ruby"

# JetstreamBridge::Testing.fake! where it does not belong (issue 22, item 14): a process
# that is not a test (a console, a server) says so in its log, and the records keep only
# the newest Testing::MAX_RECORDED events, so a process left in fake mode stays bounded.
# Each case is a Ruby process of its own (no RSpec loaded in it), pointed at a port where
# no server listens: fake mode must not need one.
RSpec.describe "JetstreamBridge::Testing.fake! outside tests" do
  # Runs `body` after configuring the bridge with a logger on $stdout; returns
  # [the JSON it printed on its "JSON:" line, everything it printed].
  def run_process(body, env: {})
    script = <<~RUBY
      require "json"
      require "logger"
      require "jetstream_bridge/testing"
      JetstreamBridge.configure(nats_urls: "nats://127.0.0.1:#{NatsServer.free_ports(1).first}", app_name: "a",
                                destination_app: "b", env: "p", logger: Logger.new($stdout))
      def rss_mb = File.read("/proc/self/status")[/VmRSS:\\s+(\\d+)/, 1].to_i / 1024.0
      #{body}
    RUBY
    clean = { "RAILS_ENV" => nil, "RACK_ENV" => nil, "RUBYOPT" => nil }
    out, status = ChildRuby.capture("-e", script, env: clean.merge(env))
    expect(status).to be_success, out
    line = out.lines.grep(/\AJSON:/).last
    expect(line).not_to be_nil, out
    [JSON.parse(line.delete_prefix("JSON:")), out]
  end

  it "warns once in a process that is not a test, and keeps the newest events only (2 x 50,000 published)" do
    result, out = run_process(<<~RUBY, env: { "RAILS_ENV" => "production" })
      JetstreamBridge::Testing.fake!
      JetstreamBridge::Testing.inline! { nil }
      live = lambda do
        GC.start
        GC.stat(:heap_live_slots)
      end
      publish = ->(from) { 50_000.times { |i| JetstreamBridge.publish(event_type: "user.created", payload: { id: from + i, name: "x" * 100 }) } }
      publish.call(0)
      first_live, first_rss = live.call, rss_mb
      publish.call(50_000)
      second_live, second_rss = live.call, rss_mb
      published = JetstreamBridge::Testing.published
      puts "JSON:" + JSON.generate(size: published.size, first: published.first.payload["id"], last: published.last.payload["id"],
                                   live: [first_live, second_live], rss: [first_rss.round(1), second_rss.round(1)],
                                   max: (JetstreamBridge::Testing::MAX_RECORDED if defined?(JetstreamBridge::Testing::MAX_RECORDED)))
    RUBY
    puts "fake mode: live objects after 50,000 and 100,000 events #{result['live'].inspect}, RSS #{result['rss'].inspect} MB, " \
         "#{result['size']} events kept"
    expect(result).to include("size" => 10_000, "first" => 90_000, "last" => 99_999, "max" => 10_000)
    first_live, second_live = result["live"]
    expect(second_live).to be < first_live * 1.1 # the second 50,000 left nothing behind
    warnings = out.lines.grep(/WARN.*JetstreamBridge::Testing\.(fake|inline)! in a process that is not a test/)
    expect(warnings.size).to eq(1), out
    expect(warnings.first).to include('RAILS_ENV="production"', "events are recorded, not sent")
  end

  it "keeps max_recorded events when set, and dead letters bounded the same way" do
    result, = run_process(<<~RUBY)
      JetstreamBridge::Testing.max_recorded = 3
      JetstreamBridge::Testing.inline!
      JetstreamBridge::Testing.handle { |_event, _subject, _deliveries| raise ArgumentError, "unrecoverable" }
      10.times { |i| JetstreamBridge.publish(event_type: "user.created", payload: { id: i }) }
      bad = begin
        JetstreamBridge::Testing.max_recorded = 0
      rescue ArgumentError => e
        e.message
      end
      puts "JSON:" + JSON.generate(ids: JetstreamBridge::Testing.published.map { |e| e.payload["id"] },
                                   dead: JetstreamBridge::Testing.dead_letters.map { |d| d.event["payload"]["id"] }, bad: bad)
    RUBY
    expect(result).to eq("ids" => [7, 8, 9], "dead" => [7, 8, 9], "bad" => "max_recorded must be a positive Integer, got 0")
  end

  it "says nothing in a test process: RAILS_ENV=test, RACK_ENV=test, or RSpec/Minitest loaded" do
    [[{ "RAILS_ENV" => "test" }, ""], [{ "RACK_ENV" => "test" }, ""], [{}, 'require "minitest"'],
     [{}, 'require "rspec/core"']].each do |env, setup|
      _, out = run_process(<<~RUBY, env: env)
        #{setup}
        JetstreamBridge::Testing.fake!
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })
        puts "JSON:" + JSON.generate(size: JetstreamBridge::Testing.published.size)
      RUBY
      expect(out).not_to include("not a test"), "#{env} #{setup}:\n#{out}"
    end
  end
end
