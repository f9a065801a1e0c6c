# frozen_string_literal: true

require "json"
require "net/http"
require "securerandom"
require "timeout"
require_relative "../support/active_record_db"

# Everything the bridge holds for a process is one ProcessState: reset! makes every part of
# it fresh, and a forked child gets a fresh one (connecting again) while the parent's stays.
RSpec.describe JetstreamBridge::ProcessState do
  # Every part, by name. A part added to ProcessState fails "holds exactly these parts"
  # until it is listed here and fresh? knows it.
  let(:parts) { %i[connection consumers marker delivery tables health outbox] }

  let(:db) { ActiveRecordDb.sqlite }
  let(:connection_name) { "process-state-#{SecureRandom.hex(4)}" }

  before do
    db.activate!
    db.truncate!
    configure_bridge(use_outbox: true, connection_name: connection_name)
  end

  after { JetstreamBridge.reset! }

  # Whether the part `name` of `state` is as a new process (or reset!) has it.
  def fresh?(state, name)
    case name
    when :connection then state.connection.to_a.drop(1).all?(&:nil?) # all but the mutex
    when :consumers
      running = state.consumers
      running.instance_variable_get(:@consumers).empty? && running.on_start.nil? && running.on_stop.nil?
    when :marker then state.instance_variable_get(:@marker).nil?
    when :delivery then state.instance_variable_get(:@delivery).nil?
    when :tables then state.tables[JetstreamBridge::OutboxEvent].nil?
    when :health then state.health[:stream].nil? && state.health[:outbox].nil?
    when :outbox
      o = state.outbox
      [o.suspended_until, o.failures, o.seq, o.max_payload, o.after_commit.size] == [0.0, 0, 0, nil, 0]
    else raise "fresh? does not know the part #{name}"
    end
  end

  def freshness(state) = parts.to_h { |name| [name, fresh?(state, name)] }

  # Uses every part: connects (provisioning), runs a consumer with a Supervisor's hooks,
  # publishes through the outbox in a transaction (a table detected, a seq taken, the row
  # marked sent by the marker), once more with outbox_delivery :background (the delivery
  # thread), reads health_check (cached), runs the block, and pauses
  # the outbox. Returns the running consumer's thread.
  def use_every_part
    JetstreamBridge::Connection.client
    JetstreamBridge::Consumer::Running.on_start = -> {}
    JetstreamBridge::Consumer::Running.on_stop = -> {}
    consumer = JetstreamBridge.subscribe(run: true) { |_event| nil }
    ActiveRecord::Base.transaction { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "e-1") }
    JetstreamBridge.configure(outbox_delivery: :background)
    ActiveRecord::Base.transaction { JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 }, event_id: "e-bg") }
    JetstreamBridge.configure(outbox_delivery: :inline)
    JetstreamBridge.health_check
    yield if block_given?
    JetstreamBridge::Outbox.suspend!("spec: paused")
    state = described_class.current
    state.connection.last_error = "spec: an error the connection reported"
    eventually { state.consumers.instance_variable_get(:@consumers).any? }
    consumer
  end

  # How many connections the nats-server has named `name` (the native client does not
  # tell it was closed: its connected? stays true after close).
  def server_connections(name)
    connz = JSON.parse(Net::HTTP.get(URI("#{shared_server.monitor_url}/connz?limit=4096")))
    connz["connections"].count { |c| c["name"] == name }
  end

  def row_status(event_id) = JetstreamBridge::OutboxEvent.find_by!(event_id: event_id).status

  it "holds exactly these parts" do
    state = described_class.current
    expect(state.instance_variables - %i[@pid @lock]).to match_array(parts.map { |name| :"@#{name}" })
  end

  it "is one object per process, read by every former singleton" do
    state = described_class.current
    expect(described_class.current).to be(state)
    client = JetstreamBridge::Connection.client
    expect(state.connection.client).to be(client)
    expect(JetstreamBridge::Consumer::Running.current).to be(state.consumers)
    expect(JetstreamBridge::Table.for(JetstreamBridge::OutboxEvent)).to be(state.tables[JetstreamBridge::OutboxEvent])
  end

  it "reset! makes every part fresh: consumers stopped, marks written, connection closed, caches and counters emptied" do
    consumer = use_every_part do
      # A mark still being written when reset! runs is waited for: this one takes 2 s
      # (stopping the consumer takes about one).
      allow(JetstreamBridge::Outbox).to receive(:mark_sent).and_wrap_original { |original, *args| sleep(2) && original.call(*args) }
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 2 }, event_id: "e-2")
    end
    state = described_class.current
    marker = state.marker
    expect(freshness(state)).to eq(parts.to_h { |name| [name, false] })
    expect(server_connections(connection_name)).to eq(1)

    JetstreamBridge.reset!

    expect(row_status("e-2")).to eq(JetstreamBridge::Outbox::SENT) # marked before the marker stopped
    expect(row_status("e-bg")).to eq(JetstreamBridge::Outbox::SENT) # delivered by the delivery thread, and marked
    expect(described_class.current).to be(state) # reset in place
    expect(freshness(state)).to eq(parts.to_h { |name| [name, true] })
    expect(consumer.join(5)).to be(consumer) # its run! returned
    expect(eventually(timeout: 5) { server_connections(connection_name).zero? }).to be(true) # closed
    expect(marker.instance_variable_get(:@thread).join(5)).to be_truthy # and its thread ended
  end

  it "gives a forked child fresh parts and its own connection, and leaves the parent's as they were" do
    use_every_part
    parent = described_class.current
    parent_client = parent.connection.client
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      state = described_class.current
      report = { own_state: !state.equal?(parent), fresh: freshness(state) }
      client = JetstreamBridge::Connection.client # connects again, to the real server
      report[:own_connection] = client.connected? && !client.equal?(parent_client)
      report[:server_connections] = server_connections(connection_name) # the parent's and the child's
      JetstreamBridge.configure(use_outbox: false) # the parent's database connection is not the child's
      report[:published] = JetstreamBridge.publish(event_type: "user.created", payload: { id: 0 }, event_id: "from-child")
    rescue Exception => e # rubocop:disable Lint/RescueException -- reported to the parent
      report = { error: "#{e.class}: #{e.message}" }
    ensure
      writer.write(JSON.generate(report))
      writer.close
      exit!(0) # not rspec's at_exit hooks
    end
    writer.close
    report = Timeout.timeout(60) { JSON.parse(reader.read, symbolize_names: true) }
    Process.wait(pid)

    expect(report).to include(own_state: true, fresh: parts.to_h { |name| [name, true] }, own_connection: true,
                              server_connections: 2)
    expect(report[:published]).to be(true)
    expect(described_class.current).to be(parent)
    expect(freshness(parent)).to eq(parts.to_h { |name| [name, false] })
    expect(parent.connection.client).to be(parent_client)
    expect(eventually { server_connections(connection_name) == 1 }).to be(true) # the child's went with it
    JetstreamBridge::Outbox.resume!
    expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 3 }, event_id: "e-3")).to be(true)
  ensure
    if pid && !report
      Process.kill("KILL", pid)
      Process.wait(pid)
    end
  end
end
