# frozen_string_literal: true

require "json"
require "tmpdir"
require_relative "../support/child_ruby"

# JetstreamBridge::OutboxEvent and InboxEvent (README: "the generated table's model") by
# name in a fresh Ruby process without Rails, before the outbox or inbox was ever used
# (issue 22, item 13): a script, a console, a job. Each case runs in a process of its own,
# since this one may have loaded the models already.
RSpec.describe "JetstreamBridge::OutboxEvent and InboxEvent without Rails" do
  # Runs the script with the gem's lib; returns what it printed on its "JSON:" line.
  def run_script(code)
    out, status = ChildRuby.capture("-e", code)
    expect(status).to be_success, out
    line = out.lines.grep(/\AJSON:/).last
    expect(line).not_to be_nil, out
    JSON.parse(line.delete_prefix("JSON:"))
  end

  let(:schema_and_query) do
    <<~RUBY
      ActiveRecord::Base.establish_connection(adapter: "sqlite3", database: File.join(Dir.mktmpdir, "db.sqlite3"))
      ActiveRecord::Migration.verbose = false
      ActiveRecord::Schema.define do
        create_table(:jetstream_outbox_events) { |t| t.string :event_id; t.string :subject; t.text :payload; t.string :status; t.timestamps }
        create_table(:jetstream_inbox_events) { |t| t.string :event_id; t.string :status; t.timestamps }
      end
      JetstreamBridge::OutboxEvent.create!(event_id: "a", subject: "s", payload: "{}", status: "pending")
      JetstreamBridge::OutboxEvent.create!(event_id: "b", subject: "s", payload: "{}", status: "sent")
      JetstreamBridge::InboxEvent.create!(event_id: "c", status: "failed")
      result[:unsent] = JetstreamBridge::OutboxEvent.unsent.count
      result[:sent] = JetstreamBridge::OutboxEvent.sent.count
      result[:failed] = JetstreamBridge::InboxEvent.failed.count
      result[:table] = JetstreamBridge::InboxEvent.table_name
      puts "JSON:" + JSON.generate(result)
    RUBY
  end

  it "resolve by name once ActiveRecord is loaded, whichever was required first; requiring the gem loads neither" do
    gem_first = run_script(<<~RUBY)
      require "json"
      require "tmpdir"
      require "jetstream_bridge"
      result = { active_record_with_gem: !!defined?(::ActiveRecord::Base),
                 models_with_gem: $LOADED_FEATURES.any? { |f| f.end_with?("jetstream_bridge/models.rb") } }
      require "active_record"
      #{schema_and_query}
    RUBY
    expect(gem_first).to eq("active_record_with_gem" => false, "models_with_gem" => false,
                            "unsent" => 1, "sent" => 1, "failed" => 1, "table" => "jetstream_inbox_events")

    active_record_first = run_script(<<~RUBY)
      require "json"
      require "tmpdir"
      require "active_record"
      require "jetstream_bridge"
      result = {}
      #{schema_and_query}
    RUBY
    expect(active_record_first).to eq("unsent" => 1, "sent" => 1, "failed" => 1, "table" => "jetstream_inbox_events")
  end

  it "stays one class when the outbox loads the models after they were named" do
    result = run_script(<<~RUBY)
      require "json"
      require "active_record"
      require "jetstream_bridge"
      named = JetstreamBridge::OutboxEvent
      JetstreamBridge.configure(app_name: "a", destination_app: "b")
      resolved = JetstreamBridge::Table.resolve_model(JetstreamBridge.config.outbox_model, "outbox_model")
      puts "JSON:" + JSON.generate(same: named.equal?(resolved), loaded: $LOADED_FEATURES.count { |f| f.end_with?("jetstream_bridge/models.rb") })
    RUBY
    expect(result).to eq("same" => true, "loaded" => 1)
  end
end
