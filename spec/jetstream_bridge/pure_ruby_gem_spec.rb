# frozen_string_literal: true

require "fileutils"
require "json"
require "open3"
require "rbconfig"
require "tmpdir"
require_relative "../support/consumer_helpers"
require_relative "../support/raw_jetstream"

# subject_layout :app beside the pure-Ruby gem 7.1 itself, run in a child process. Its
# source is not part of this repository (nor installable here: RubyGems is out of reach),
# so these run only when given: JSB_PURE_RUBY_GEM_LIB, the lib folder of jetstream_bridge
# 7.1.x, and JSB_NATS_PURE_LIB, nats-pure 2.x's; the oj gem must be installed (Debian's
# ruby-oj). subject_layout_spec.rb sends the same requests without them.
RSpec.describe "subject_layout :app beside the pure-Ruby gem 7.1 (its own code)" do
  include ConsumerHelpers
  include_context "with its own nats-server"

  GEM_LIB = ENV["JSB_PURE_RUBY_GEM_LIB"]
  NATS_PURE_LIB = ENV["JSB_NATS_PURE_LIB"]
  APP = File.expand_path("../fixtures/pure_ruby_gem_app.rb", __dir__)

  before(:all) do
    missing = { "JSB_PURE_RUBY_GEM_LIB" => GEM_LIB, "JSB_NATS_PURE_LIB" => NATS_PURE_LIB }.reject { |_, dir| dir && File.directory?(dir) }
    skip("set #{missing.keys.join(' and ')} to run the pure-Ruby gem itself") if missing.any?
    skip("the oj gem is not installed") unless system(RbConfig.ruby, "-e", "require 'oj'", err: File::NULL)

    @gem_lib = Dir.mktmpdir("jsb71")
    FileUtils.cp_r("#{GEM_LIB}/.", @gem_lib)
    # Its few Ruby 3.2 anonymous argument forwardings, named for an older Ruby (syntax only).
    if RUBY_VERSION < "3.2"
      Dir["#{@gem_lib}/**/*.rb"].each do |file|
        source = File.read(file)
        named = source.gsub("(*, **)", "(*args, **opts)").gsub(/, \*\*\)$/, ", **opts)")
        File.write(file, named) unless named == source
      end
    end
  end

  after(:all) { FileUtils.rm_rf(@gem_lib) if @gem_lib }
  after { stop_consumers }

  # Runs the pure-Ruby app billing (to api) with `command`: [stdout, stderr].
  def billing(command, wait: 15)
    env = { "APP" => "billing", "DEST" => "api", "WAIT" => wait.to_s }
    out, err, status = Open3.capture3(env, RbConfig.ruby, "-I", NATS_PURE_LIB, "-I", @gem_lib, APP, @server.url, command)
    raise "pure-Ruby app #{command} failed (#{status}):\n#{err}" unless status.success?

    [out, err]
  end

  def configure_api
    configure_bridge(server: @server, subject_layout: :app, app_name: "api", destination_app: "billing", use_dlq: true)
  end

  def subjects = RawJetStream.stream_info(@server.url, "jetstream-bridge-stream")["config"]["subjects"]

  it "shares the stream it created first, and it shares the stream this app created first" do
    billing("provision")
    configure_api
    expect(JetstreamBridge.ensure_topology!).to include("action" => "updated", "added" => ["api.sync.dlq"], "retention" => "workqueue")
    expect(subjects).to eq(["billing.sync.api", "api.sync.billing", "billing.sync.dlq", "api.sync.dlq"])

    @server.cleanup
    @server = NatsServer.new.start
    configure_api
    JetstreamBridge.ensure_topology!
    _, log = billing("provision")
    expect(log).to include("Updated stream jetstream-bridge-stream; added subjects=[\"billing.sync.dlq\"]")
    expect(subjects).to eq(["api.sync.billing", "billing.sync.api", "api.sync.dlq", "billing.sync.dlq"])
  end

  it "reads this app's event with its consumer, and this app's consumer reads its event" do
    billing("provision")
    configure_api
    JetstreamBridge.publish(resource_type: "user", event_type: "created", payload: { id: 42 }, event_id: "evt-42", trace_id: "t-42")
    out, = billing("consume")
    event = JSON.parse(out[/^EVENT (.*)$/, 1])
    expect(event).to include("event_id" => "evt-42", "type" => "created", "resource_type" => "user", "resource_id" => "42",
                             "producer" => "api", "trace_id" => "t-42", "schema_version" => 1, "payload" => { "id" => 42 })
    expect(event["metadata"]).to include("subject" => "api.sync.billing", "consumer" => "billing-workers", "deliveries" => 1)

    out, = billing("publish")
    published = JSON.parse(out[/^PUBLISHED (.*)$/, 1])
    expect(published).to include("success" => true, "subject" => "billing.sync.api")
    _, calls = run_recording_consumer
    eventually { calls.size == 1 }
    expect(calls.to_a.first.event).to include("event_id" => published["event_id"], "producer" => "billing",
                                              "payload" => { "id" => 7, "email" => "ada@example.com" })
  end
end
