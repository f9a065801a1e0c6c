# frozen_string_literal: true

require "ripper"
require "jetstream_bridge/testing"
require_relative "../support/consumer_helpers"

# The typed boundary between lib/ and the core (lib/jetstream_bridge/native_types.rb): the
# core's results are Structs read by member name, never by position. Two checks:
#
# - At run time: the native result Structs record any positional read (an Integer index,
#   to_a/values/deconstruct, and the implicit to_ary of `a, b = result` and of a block
#   taking |a, b|) while the publish, batch, consume, dead-letter, DLQ replay, provision
#   and Testing paths run against a real server. A positional read in lib/ on those paths
#   fails here, whatever variable holds the result; one rescued by lib/ is still recorded.
# - In the source: an Integer index (`x[0]`, `x[1..]`) in lib/ is either listed below
#   with what it reads (none is a native result), or fails. Paths the run above does not
#   take (the outbox's) are covered by this one.
RSpec.describe "The typed native boundary" do
  include ConsumerHelpers

  after { stop_consumers }

  NATIVE_RESULT_STRUCTS = JetstreamBridge::Native.constants.map { |name| JetstreamBridge::Native.const_get(name) }
                                   .select { |c| c.is_a?(Class) && c < Struct }
                                   .reject { |c| c.name.end_with?("Options", "StreamLimits", "StreamSpec", "EventDefaults") }

  # Records positional reads of native result Structs while `on`.
  module NativePositionalReads
    @on = false
    @reads = []
    @lock = Mutex.new

    class << self
      attr_accessor :on

      def reads = @lock.synchronize { @reads.dup }

      def note(struct, how)
        return unless on

        site = caller_locations.find { |l| l.path.include?("/lib/jetstream_bridge/") && !l.path.end_with?("native_types.rb") }
        @lock.synchronize { @reads << "#{struct.class.name}#{how} at #{site || caller_locations(2, 1).first}" }
      end
    end

    def [](key)
      NativePositionalReads.note(self, "[#{key.inspect}]") if key.is_a?(Integer)
      super
    end

    def dig(key, *rest)
      NativePositionalReads.note(self, ".dig(#{key.inspect})") if key.is_a?(Integer)
      super
    end

    def to_a
      NativePositionalReads.note(self, ".to_a")
      super
    end

    def values
      NativePositionalReads.note(self, ".values")
      super
    end

    def deconstruct
      NativePositionalReads.note(self, ".deconstruct")
      super
    end

    def values_at(*)
      NativePositionalReads.note(self, ".values_at")
      super
    end

    # Multiple assignment and |a, b| blocks take a Struct apart through to_ary, which it
    # has only while recording (other specs see Structs as they are).
    def respond_to_missing?(name, include_all = false)
      (name == :to_ary && NativePositionalReads.on) || super
    end

    def method_missing(name, *args)
      return super unless name == :to_ary && NativePositionalReads.on

      NativePositionalReads.note(self, " taken apart (to_ary)")
      members.map { |m| public_send(m) }
    end
  end

  before(:all) { NATIVE_RESULT_STRUCTS.each { |klass| klass.prepend(NativePositionalReads) } }

  it "covers every result Struct the core builds" do
    expect(NATIVE_RESULT_STRUCTS.map { |c| c.name.split("::").last }).to include(
      "Message", "Failure", "Published", "BatchOutcome", "BuiltEvent", "Envelope", "StoredMessage",
      "ConnectionEvent", "DrainedEvents", "DurableReport"
    )
  end

  it "reads the core's results by name on the publish, consume, dead-letter and testing paths" do
    configure_bridge(use_dlq: true, max_deliver: 2, unrecoverable_errors: [ArgumentError])
    NativePositionalReads.on = true
    begin
      # Publish: built and sent by the core; built by Ruby (headers); a batch of each kind,
      # with a failed event in each.
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 2 }, headers: { "X-Trace" => "t" })
      nowhere = "#{bridge_env}.nowhere.at.all"
      core = JetstreamBridge.publish_batch([{ event_type: "a.b", payload: {} }, { event_type: "a.b", payload: {}, subject: nowhere }])
      ruby = JetstreamBridge.publish_batch([{ event_type: "a.b", payload: {}, headers: { "X-A" => "1" } },
                                            { event_type: "a.b", payload: {}, subject: nowhere, headers: { "X-A" => "2" } }])
      expect([core, ruby].map { |r| r.failed.map { |f| [f[0], f[2]] } }).to all(eq([[1, "StreamNotFoundError"]]))

      # Consume with two workers; one event dead-lettered, then listed, found and replayed.
      ids = publish_incoming(4)
      failing = ids.last
      _, calls = run_recording_consumer(concurrency: 2) { |call| raise ArgumentError, "no" if call.id == failing }
      eventually(timeout: 15) { calls.distinct_ids.sort == ids.sort && dlq_messages.size == 1 }
      stop_consumers
      entry = JetstreamBridge::DeadLetters.list.first
      expect(entry.event_id).to eq(failing)
      expect(JetstreamBridge::DeadLetters.find(entry.seq).seq).to eq(entry.seq)
      expect(JetstreamBridge::DeadLetters.replay(entry.seq)).to be(true)

      expect(JetstreamBridge.provision![:consumer].first).to be_a(String)
      JetstreamBridge::Connection.drain_events

      # Testing: the Settler hands the Processor a Native::Message; the fake sink records
      # BuiltEvents.
      handler = ->(_event, _subject, _deliveries) { raise ArgumentError, "bad" }
      expect(JetstreamBridge::Testing.deliver(handler, event_type: "user.created", payload: { id: 9 })).to eq(:dead_letter)
      JetstreamBridge::Testing.fake! do
        JetstreamBridge.publish(event_type: "user.created", payload: { id: 10 })
        JetstreamBridge.publish_batch([{ event_type: "user.created", payload: { id: 11 } }])
      end
      expect(JetstreamBridge::Testing.published.map(&:payload)).to include({ "id" => 10 }, { "id" => 11 })
    ensure
      NativePositionalReads.on = false
      JetstreamBridge::Testing.clear!
    end
    expect(NativePositionalReads.reads).to eq([])
  end

  # Every Integer index in lib/ (`receiver[<integer>`), and what it reads: none of them is a
  # native result. A new one is listed here with what it reads, or is a name.
  LIB_INTEGER_INDEXES = {
    "config.rb" => ["key[0", "key[1", "key[2", "key[3", "size[1", "size[2"], # the names cache key; a size setting's MatchData
    "consumer/pool.rb" => ["holder[1"],                  # a key holder: [entry, started]
    "event.rb" => ["inspect[0", "inspect[0", "inspect[0", "inspect[0", "message[0"], # Strings cut short for messages
    "headers.rb" => ["inspect[0"],                       # a String cut short
    "health.rb" => ["hit[0", "hit[1", "hit[2"],               # the health cache entry
    "inbox.rb" => [")[0"],                               # a String cut to its column's length
    "outbox.rb" => ["cached[0", "cached[1", "entries[0"], # the max_payload cache; Outbox::Entries
    "outbox_relay.rb" => ["last[0", "row[0", "row[5"],         # SQL rows of a claim
    "supervisor.rb" => ["error[0"],                      # a String cut short
    "web.rb" => ["m[1", "m[1", "m[1", "m[1", "m[1", "m[2", "m[2"], # a route's MatchData captures
    "web/csrf.rb" => ["response[1"]                      # a Rack response's headers
  }.freeze

  it "has no Integer index in lib/ but the listed ones" do
    lib = File.expand_path("../../lib/jetstream_bridge", __dir__)
    found = Dir[File.join(lib, "**/*.rb")].to_h do |path|
      indexes = Ripper.lex(File.read(path)).each_cons(3).filter_map do |(_, type_a, a), (_, type_b, _), (_, type_c, c)|
        next unless type_b == :on_lbracket && type_c == :on_int
        next unless %i[on_ident on_ivar on_const on_rparen on_rbrace].include?(type_a) || a == "]"

        "#{a}[#{c}"
      end
      [path.delete_prefix("#{lib}/"), indexes.sort]
    end
    expect(found.reject { |_, indexes| indexes.empty? }).to eq(LIB_INTEGER_INDEXES)
  end
end
