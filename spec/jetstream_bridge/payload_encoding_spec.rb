# frozen_string_literal: true

require "bigdecimal"
require "json"
require_relative "../support/child_ruby"

# The core encodes payloads of plain values itself (Native.encode_json); its output must
# be byte for byte what Ruby writes (JSON.generate, or ActiveSupport::JSON.encode in a
# Rails app), and anything it does not know is left to Ruby (nil).
RSpec.describe "Payload encoding" do
  plain = {
    "escapes" => { text: "quote \" backslash \\ slash / tab \t nl \n cr \r bs \b ff \f" },
    "control characters" => { "c" => (0..31).map(&:chr).join + "\x7f" },
    "non-ASCII" => { name: "Zoë 日本 😀", sep: "a\u2028b\u2029c", html: "</script><b>&amp;" },
    "numbers" => { i: 0, neg: -42, big: (2**62) - 1, small: -(2**62), f: 0.1, e: 1.0e20, tiny: 1.0e-5, nz: -0.0, x: 123.456 },
    "literals" => { t: true, f: false, n: nil },
    "symbols" => { sym: :value, list: %i[a b] },
    "nesting" => { a: [1, [2, [3, { b: [] }]], {}], "s" => { "t" => { "u" => "v" } } },
    "100 levels" => 99.times.reduce([1]) { |inner, _| [inner] },
    "top-level array" => [1, "two", { three: 3.0 }],
    "US-ASCII text" => { ascii: "plain".encode("US-ASCII") },
    "empty" => {}
  }

  plain.each do |name, value|
    it "writes #{name} as JSON.generate does" do
      expect(JetstreamBridge::Native.encode_json(value, :json_gem)).to eq(JSON.generate(value))
    end
  end

  left_to_ruby = {
    "a Time" => { at: Time.at(0) },
    "a BigDecimal" => { price: BigDecimal("1.5") },
    "a Bignum" => { n: 2**70 },
    "NaN" => { f: Float::NAN },
    "Infinity" => { f: Float::INFINITY },
    "invalid UTF-8" => { s: "ab\xFF".dup.force_encoding("UTF-8") },
    "binary bytes" => { s: "\xFF".b },
    "ISO-8859-1 text" => { s: "caf\xE9".dup.force_encoding("ISO-8859-1") },
    "a Hash subclass" => { h: Class.new(Hash).new },
    "a String subclass" => { s: Class.new(String).new("x") },
    "an Integer key" => { 1 => "one" },
    "101 levels" => 100.times.reduce([1]) { |inner, _| [inner] },
    "a circular payload" => [].tap { |a| a << a },
    "an object" => { o: Object.new }
  }

  left_to_ruby.each do |name, value|
    it "leaves #{name} to Ruby" do
      expect(JetstreamBridge::Native.encode_json(value, :json_gem)).to be_nil
    end
  end

  it "encodes as ActiveSupport does when only its autoload is in place (require \"active_record\" alone)" do
    script = <<~RUBY
      require "active_record"
      require "jetstream_bridge"
      config = JetstreamBridge::Config.new.tap { |c| c.app_name = "app"; c.destination_app = "dest" }
      print JetstreamBridge::Event.build({ event_type: "x", payload: { html: "<&>" } }, config).json
    RUBY
    out, err, status = ChildRuby.capture3("-e", script)
    expect(status).to be_success, err
    expect(out).to include('"payload":{"html":"\\u003c\\u0026\\u003e"}')
  end

  it "writes what ActiveSupport::JSON.encode writes, with and without HTML escaping" do
    script = <<~RUBY
      require "json"
      require "active_support"
      require "active_support/json"
      require "jetstream_bridge"
      values = Marshal.load($stdin.read)
      mismatches = []
      [[false, :active_support], [true, :active_support_html_safe]].each do |html, style|
        ActiveSupport.escape_html_entities_in_json = html
        values.each do |name, value|
          ours = JetstreamBridge::Native.encode_json(value, style)
          theirs = ActiveSupport::JSON.encode(value)
          mismatches << [name, html, ours, theirs] unless ours == theirs
        end
      end
      # What the publisher uses with ActiveSupport loaded, end to end.
      config = JetstreamBridge::Config.new.tap { |c| c.app_name = "app"; c.destination_app = "dest" }
      built = JetstreamBridge::Event.build({ event_type: "x", payload: { html: "<&>" } }, config)
      puts JSON.generate(mismatches: mismatches, envelope: built.json)
    RUBY
    out, err, status = ChildRuby.capture3("-e", script, stdin_data: Marshal.dump(plain))
    expect(status).to be_success, err
    result = JSON.parse(out)
    expect(result["mismatches"]).to eq([])
    expect(JSON.parse(result["envelope"])["payload"]).to eq("html" => "<&>")
    expect(result["envelope"]).to include('"payload":{"html":"\\u003c\\u0026\\u003e"}')
  end
end
