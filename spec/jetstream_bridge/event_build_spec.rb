# frozen_string_literal: true

require "json"

# Event.build has a fast path in the core (Native.build_event) for the common case; it
# must write exactly what the Ruby path writes, and leave everything else (including
# every invalid argument, whose error Ruby raises) to Ruby by returning nil.
RSpec.describe "Event.build in the core" do
  config = JetstreamBridge::Config.new.tap do |c|
    c.env = "test"
    c.app_name = "app"
    c.destination_app = "dest"
  end

  def native(args, config) = JetstreamBridge::Native.build_event(args, config.event_defaults(:json_gem))

  # Generated values differ between two calls: ids are compared by shape, the time blanked.
  def comparable(json, ids_given)
    json = json.sub(/"occurred_at":"[^"]*"/, '"occurred_at":""')
    ids_given ? json : json.sub(/"event_id":"[^"]*"/, '"event_id":""').sub(/"trace_id":"[^"]*"/, '"trace_id":""')
  end

  same = {
    "the structured form" => { resource_type: "user", event_type: "created", payload: { id: 1, email: "a@b.c" } },
    "the dotted event_type form" => { event_type: "user.created", payload: { "id" => "u-1", "n" => [1.5, nil, true] } },
    "the full envelope form" => { event_id: "e-1", event_type: "user.created", producer: "other", resource_type: "user",
                                  resource_id: "9", trace_id: "t-1", payload: {}, schema_version: 1 },
    "string keys" => { "event_type" => "x.y", "payload" => [1, 2], "trace_id" => "t", "event_id" => "e" },
    "a subject override" => { event_type: "x", subject: "custom.subject", event_id: "e", trace_id: "t" },
    "blank optional fields" => { event_type: "x", resource_type: " \t", trace_id: "", event_id: "  ", producer: "" },
    "no payload" => { event_type: "x" },
    "a nil payload" => { event_type: "x", payload: nil },
    "a String payload" => { event_type: "x", payload: "text" },
    "both id keys (the Symbol wins)" => { event_type: "x", payload: { :id => 5, "id" => 6 } },
    "a String id key" => { event_type: "x", payload: { "id" => 7 } },
    "a nil resource_id (the payload id is used)" => { event_type: "x", resource_id: nil, payload: { id: 3 } },
    "an Integer resource_id" => { event_type: "x", resource_id: 12 },
    "a blank payload id" => { event_type: "x", payload: { id: " " } },
    "a false Symbol-keyed payload id (no id)" => { event_type: "x", payload: { id: false } },
    "a false String-keyed payload id (no id)" => { event_type: "x", payload: { "id" => false } },
    "a leading dot" => { event_type: ".created" },
    "only dots" => { event_type: "..." },
    "a blank first segment" => { event_type: " .created" },
    "schema_version \"1\"" => { event_type: "x", schema_version: "1" },
    "a nil schema_version and occurred_at" => { event_type: "x", schema_version: nil, occurred_at: nil },
    "a false subject" => { event_type: "x", subject: false },
    "non-ASCII text" => { event_type: "ünïcode.created", producer: "prödücer", payload: { name: "Zoë" } }
  }

  same.each do |name, args|
    it "builds #{name} exactly as Ruby does" do
      fast = native(args, config)
      expect(fast).not_to be_nil
      slow = JetstreamBridge::Event.build_in_ruby(args, config)
      ids_given = [args[:event_id] || args["event_id"], args[:trace_id] || args["trace_id"]].all? { |v| v.to_s.strip != "" }
      expect(fast.subject).to eq(slow.subject)
      expect(comparable(fast.json, ids_given)).to eq(comparable(slow.json, ids_given))
      envelope = JSON.parse(fast.json)
      expect(fast.event_id).to eq(envelope["event_id"])
      expect(envelope["event_id"]).to match(/\A\h{8}-\h{4}-4\h{3}-\h{4}-\h{12}\z/) unless ids_given
      expect(envelope["occurred_at"]).to match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\z/)
    end
  end

  left_to_ruby = {
    "an unknown argument" => { event_type: "x", colour: "red" },
    "a missing event_type" => { payload: {} },
    "a blank event_type" => { event_type: " " },
    "a Symbol event_type" => { event_type: :created },
    "an invalid UTF-8 event_type" => { event_type: "x\xFF".dup.force_encoding("UTF-8") },
    "a binary event_type" => { event_type: "x".b },
    "schema_version 2" => { event_type: "x", schema_version: 2 },
    "an event_id with a newline" => { event_type: "x", event_id: "a\nb" },
    "a non-ASCII event_id" => { event_type: "x", event_id: "é" },
    "an event_id over 1024 bytes" => { event_type: "x", event_id: "e" * 1025 },
    "an invalid subject" => { event_type: "x", subject: "a b" },
    "a wildcard subject" => { event_type: "x", subject: "a.>" },
    "a Time occurred_at" => { event_type: "x", occurred_at: Time.now },
    "a String occurred_at" => { event_type: "x", occurred_at: "2025-01-01T00:00:00Z" },
    "a Time in the payload" => { event_type: "x", payload: { at: Time.now } },
    "a Float payload id" => { event_type: "x", payload: { id: 1.5 } },
    "a Symbol producer" => { event_type: "x", producer: :svc }
  }

  left_to_ruby.each do |name, args|
    it "leaves #{name} to Ruby" do
      expect(native(args, config)).to be_nil
    end
  end

  # Generated ids come from a per-process buffer of OS randomness: a forked child (which
  # inherits the parent's buffer) must not repeat the parent's ids, or the server would
  # drop its events as duplicates.
  it "never repeats an event or trace id across forked children" do
    ids = ->(n) { Array.new(n) { JSON.parse(native({ event_type: "x" }, config).json).values_at("event_id", "trace_id") }.flatten }
    parent_ids = ids.call(2)
    children = Array.new(2) do
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        writer.write(JSON.generate(ids.call(3)))
        writer.close
        exit!(0)
      end
      writer.close
      [pid, reader]
    end
    child_ids = children.flat_map { |pid, reader| JSON.parse(reader.read).tap { reader.close; Process.wait(pid) } }
    all = parent_ids + child_ids + ids.call(3)
    expect(all.size).to eq(2 * 2 + 2 * 3 * 2 + 3 * 2)
    expect(all.uniq.size).to eq(all.size)
  end

  it "is what JetstreamBridge.publish uses, and Ruby still raises for bad arguments" do
    expect(JetstreamBridge::Event.build({ event_type: "x" }, config).subject).to eq("test.app.sync.dest")
    expect { JetstreamBridge::Event.build({ event_type: "x", colour: "red" }, config) }
      .to raise_error(ArgumentError, /unknown publish argument: :colour/)
  end
end
