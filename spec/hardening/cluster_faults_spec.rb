# frozen_string_literal: true

require "json"
require "open3"
require "set"
require_relative "../support/consumer_helpers"
require_relative "../support/reference_publisher"

module ClusterFaultSupport
  # Publishes with the batch API from a thread until stopped, re-sending what failed at
  # once (same event ids) and remembering what was acked and when.
  class BatchPublisher
    attr_reader :acked, :attempted, :failures, :ack_times

    def initialize(prefix, subject, batch: 10, pause: 0.05)
      @prefix = prefix
      @subject = subject
      @batch = batch
      @pause = pause
      @acked = Set.new
      @attempted = 0
      @failures = Hash.new(0)
      @ack_times = []
      @mutex = Mutex.new
      @stop = false
    end

    def start
      @thread = Thread.new { run }
      @thread.report_on_exception = false
      self
    end

    def stop(drain_timeout: 20)
      @stop = true
      @thread.join(drain_timeout + 30) or raise "publisher thread did not end"
      @thread.value
    end

    def last_ack_at = @mutex.synchronize { @ack_times.last }

    def longest_gap
      times = @mutex.synchronize { @ack_times.dup }
      times.each_cons(2).map { |a, b| b - a }.max || 0
    end

    private

    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    def run
      pending = []
      n = 0
      drain_until = nil
      loop do
        if @stop
          drain_until ||= monotonic + 20
          break if pending.empty? || monotonic > drain_until
        end
        ids = pending.shift(@batch)
        unless @stop
          while ids.size < @batch
            ids << "#{@prefix}-#{n += 1}"
            @attempted += 1
          end
        end
        result = JetstreamBridge.publish_batch(ids.map { |id| { event_type: "user.created", payload: { id: id }, event_id: id, subject: @subject } })
        failed = result.failed.map { |f| f[1] }
        failed_set = failed.to_set
        now = monotonic
        @mutex.synchronize do
          ids.each { |id| @acked << id unless failed_set.include?(id) }
          @ack_times << now if failed.size < ids.size
        end
        result.failed.each { |f| @failures[f[2]] += 1 }
        pending.concat(failed)
        sleep @pause
      end
      pending
    end
  end
end

# A 3-node JetStream cluster on loopback (nats-server 2.15 where installed, 2.9 otherwise)
# with an R3 stream: the stream leader is killed with SIGKILL and restarted, round after
# round, while the batch API publishes and a consumer consumes; then a rolling restart in
# lame-duck mode. The figures are printed for the CI log.
RSpec.describe "Cluster faults (3-node JetStream cluster)" do
  include ConsumerHelpers

  rounds = 5
  # Seconds within which publishing must resume after the stream leader is killed: a
  # sanity bound (an election on a loaded machine took over 10 s once); that the bridge
  # adds no stall is checked against the raw client's own gap below.
  resume_within = 15
  # lame_duck_duration has a 30 s floor; with a 1 s grace period and a few clients a
  # server leaves lame-duck mode (and exits) within a couple of seconds.
  ldm_config = "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"1s\"\n"

  before(:context) do
    @binary = NatsBinaries.default
    @nodes = NatsServer.cluster(3, binary: @binary, config: ldm_config)
  end

  after(:context) { @nodes&.each(&:cleanup) }

  # Every node up and the JetStream API answering a full stream listing (which waits on
  # every stream's leader) before an example starts: the previous one may have restarted
  # a node whose streams are still catching up.
  before do
    eventually(timeout: 60, interval: 0.5) { nodes.all?(&:running?) && api("$JS.API.STREAM.LIST") }
  end

  # The example's stream is deleted, so that later examples (and restarts) carry fewer
  # raft groups.
  after do
    stop_consumers
    node = live_nodes.first
    NatsApi.request(node.url, "$JS.API.STREAM.DELETE.#{stream_name}", "", timeout: 5) if node
  rescue StandardError
    nil
  end

  attr_reader :nodes

  def live_nodes = nodes.select(&:running?)

  # A JetStream API request answered by any live node; nil when none answers.
  def api(subject)
    live_nodes.shuffle.each do |node|
      reply = NatsApi.request(node.url, subject, "", timeout: 1)
      return reply unless reply["error"]
    rescue NatsApi::Error, SystemCallError
      next
    end
    nil
  end

  def stream_leader
    name = eventually(timeout: 20, interval: 0.1) { api("$JS.API.STREAM.INFO.#{stream_name}")&.dig("cluster", "leader") }
    nodes.find { |n| n.server_name == name } or raise "no node named #{name}"
  end

  def meta_leader
    name = eventually(timeout: 20, interval: 0.1) { live_nodes.first.monitor("/jsz")&.dig("meta_cluster", "leader") }
    nodes.find { |n| n.server_name == name }
  end

  # Moves the stream's leadership until it sits on a node that is not the meta leader
  # (the usual case with many streams): the JetStream API then answers at once during
  # the stream's election, and only the publish path sees "no responders".
  def stream_leader_apart_from_meta_leader
    10.times do
      leader = stream_leader
      return leader unless leader == meta_leader

      NatsApi.request(leader.url, "$JS.API.STREAM.LEADER.STEPDOWN.#{stream_name}", "")
      eventually(timeout: 20, interval: 0.1) { stream_leader != leader }
      wait_settled(durable: nil)
    end
    raise "the stream leader stays on the meta leader"
  end

  # Leader elected and both followers current, for the stream and (when given) the durable.
  def settled?(durable)
    infos = [api("$JS.API.STREAM.INFO.#{stream_name}")]
    infos << api("$JS.API.CONSUMER.INFO.#{stream_name}.#{durable}") if durable
    infos.all? do |info|
      cluster = info&.dig("cluster") || {}
      replicas = cluster["replicas"] || []
      cluster["leader"] && replicas.size == 2 && replicas.all? { |r| r["current"] }
    end
  end

  def wait_settled(durable: JetstreamBridge.config.durable_name)
    eventually(timeout: 30, interval: 0.2) { settled?(durable) }
  end

  # This node's own copy of the stream: {messages, first_seq, last_seq} from /jsz.
  def node_stream_state(node)
    jsz = node.monitor("/jsz?accounts=true&streams=true") || {}
    detail = (jsz["account_details"] || []).flat_map { |a| a["stream_detail"] || [] }.find { |s| s["name"] == stream_name }
    detail && detail["state"].slice("messages", "first_seq", "last_seq")
  end

  # Nats-Msg-Id of every stored message, read through an ephemeral consumer (no acks),
  # in stream order. A read that ends before its first message (a status reply: a CI run
  # got none of 1,231 on a loaded machine) is made again with a new consumer, up to 5 times.
  def stored_msg_ids(expected)
    ids = []
    5.times do
      ids = read_stored_msg_ids(expected)
      break unless ids.empty?

      sleep 1
    end
    ids
  end

  def read_stored_msg_ids(expected)
    node = live_nodes.first
    reply = NatsApi.request(node.url, "$JS.API.CONSUMER.CREATE.#{stream_name}",
                            { stream_name: stream_name,
                              config: { deliver_policy: "all", ack_policy: "none", filter_subject: dest_subject,
                                        inactive_threshold: 30_000_000_000, num_replicas: 1, mem_storage: true } })
    raise "ephemeral consumer: #{reply['error'].inspect}" if reply["error"]

    ids = []
    NatsApi.with_conn(node.url, 5) do |conn|
      inbox = "_INBOX.stored.#{rand(1 << 40)}"
      conn.subscribe(inbox)
      conn.publish("$JS.API.CONSUMER.MSG.NEXT.#{stream_name}.#{reply['name']}",
                   JSON.generate(batch: expected + 10, expires: 10_000_000_000, no_wait: false), reply: inbox)
      while ids.size < expected
        msg = conn.next_message or break
        break if msg[:status]

        ids << msg[:headers].to_s[/^Nats-Msg-Id:\s*(\S+)/i, 1]
      end
    end
    ids
  end

  # The longest time from `from` to `to` with no event handled.
  def longest_handling_gap(calls, from, to)
    times = [from, *calls.to_a.map(&:at).select { |t| t > from && t < to }.sort, to]
    times.each_cons(2).map { |a, b| b - a }.max
  end

  # The default request_timeout (5 s): a publish whose ack is lost must not wait it out.
  it "loses no acknowledged event and does not stall publishing when the stream leader is killed (SIGKILL), #{rounds} times" do
    configure_bridge(server: NatsServer.urls(nodes), stream_replicas: 3, ack_wait: "5s",
                     max_deliver: 1000, backoff: %w[100ms], batch_size: 50)
    ReferencePublisher.build!
    JetstreamBridge.ensure_topology!
    _consumer, calls = run_recording_consumer
    publisher = ClusterFaultSupport::BatchPublisher.new(bridge_env, dest_subject).start
    # The raw client publishes the same way onto the stream's other subject.
    reference = ReferencePublisher.start(NatsServer.urls(nodes), JetstreamBridge.config.source_subject)
    eventually(timeout: 10) { publisher.acked.size > 50 && calls.size > 50 }
    wait_settled

    results = Array.new(rounds) do |round|
      leader = stream_leader
      killed_at = monotonic
      leader.kill
      eventually(timeout: 30, interval: 0.05) { publisher.last_ack_at.to_f > killed_at + 0.2 }
      resumed_after = publisher.last_ack_at - killed_at
      sleep 0.5 # the scenario: the old leader stays down a while
      leader.start
      wait_settled
      { round: round + 1, killed: leader.server_name, resumed_after: resumed_after.round(2),
        settled_after: (monotonic - killed_at).round(2), killed_at: killed_at }
    end

    rounds_ended = monotonic
    reference_figures = reference.stop
    unacked = publisher.stop
    acked = publisher.acked
    eventually(timeout: 60, interval: 0.2) { acked.subset?(calls.distinct_ids.to_set) }
    states = eventually(timeout: 30, interval: 0.2) do
      s = nodes.map { |n| node_stream_state(n) }
      s if s.uniq.size == 1 && s.first
    end
    stored = stored_msg_ids(states.first["messages"])
    stored_set = stored.to_set
    lost = acked.reject { |id| stored_set.include?(id) }
    consumer_dupes = calls.size - calls.distinct_ids.size
    longest_outage = results.map { |r| r[:resumed_after] }.max
    # Per round, from its kill to the next: a pause is counted after the fault that caused
    # it. (Over the whole run, a CI run on an overloaded machine added ~5 s of a quiet spell
    # before one kill to the outage after it: 13.07 s, no round over 7.77 s.)
    ends = results.drop(1).map { |r| r[:killed_at] } + [rounds_ended]
    results.zip(ends) { |r, to| r[:consumer_gap] = longest_handling_gap(calls, r[:killed_at], to).round(2) }
    consumer_gap = results.map { |r| r[:consumer_gap] }.max

    puts <<~FIGURES

      == cluster fault figures (nats-server #{@binary[:version]}, 3 nodes, R3 stream, SIGKILL of the stream leader) ==
      rounds:                         #{rounds}
      #{results.map { |r| "  round #{r[:round]}: killed #{r[:killed]}, publishing resumed after #{r[:resumed_after]}s, cluster settled after #{r[:settled_after]}s, consumer's longest gap #{r[:consumer_gap]}s" }.join("\n")}
      events sent (distinct ids):     #{publisher.attempted}
      events acked:                   #{acked.size}
      never acked (given up):         #{unacked.size}
      acked but lost:                 #{lost.size}
      stored messages (every node):   #{states.first['messages']} (#{stored_set.size} distinct ids, #{stored.size - stored_set.size} stored twice)
      node stream states:             #{states.first.inspect} x #{states.size}
      consumer deliveries handled:    #{calls.size} (#{calls.distinct_ids.size} distinct, #{consumer_dupes} duplicates)
      longest publish outage:         #{longest_outage}s (longest gap between acks #{publisher.longest_gap.round(2)}s)
      raw async-nats client:          longest gap between acks #{reference_figures['longest_gap'].round(2)}s (#{reference_figures['acked']} acked; 1 s timeout, failed events sent again at once)
      consumer:                       longest gap between handled events after a kill (per round) #{consumer_gap.round(2)}s
      batch failures by error:        #{publisher.failures.inspect}
    FIGURES

    expect(lost).to be_empty
    # No stall: publishing resumes as soon as a raw client's does (an election takes
    # seconds either way), not after request_timeout (5 s more). The 2 s of room: the
    # bridge's batch loop, and four rspec workers sharing two cores (1.05 s over was seen
    # there, 0.3 s on a quiet machine).
    expect(publisher.longest_gap).to be <= reference_figures["longest_gap"] + 2.0
    # Nor does the consumer wait out API timeouts (request_timeout 5 s each): it handles
    # again once events flow. The bound leaves room for the consumer's own catching up on
    # two shared cores (the rspec workers run side by side): 4.6 s over was seen there.
    expect(consumer_gap).to be <= publisher.longest_gap + 5.0
    # Rows that failed did so as "publish again" failures, never as a missing stream.
    expect(publisher.failures.keys - %w[StreamUnavailableError PublishTimeoutError]).to be_empty
    expect(results.map { |r| r[:resumed_after] }).to all(be < resume_within)
    expect(stored.size).to eq(stored_set.size) # Nats-Msg-Id kept re-sent events from being stored twice
    expect(consumer_errors).to be_empty
  end

  it "lets a rolling restart in lame-duck mode pass with no error reaching the application" do
    configure_bridge(server: NatsServer.urls(nodes), stream_replicas: 3, request_timeout: "2s", ack_wait: "5s",
                     max_deliver: 1000, backoff: %w[100ms], publish_attempts: 40, retry_strategy: :linear)
    JetstreamBridge.ensure_topology!
    _consumer, calls = run_recording_consumer
    wait_settled
    published = Queue.new
    errors = Queue.new
    stop = false
    publisher = Thread.new do
      n = 0
      until stop
        id = "#{bridge_env}-ldm-#{n += 1}"
        begin
          JetstreamBridge.publish(event_type: "user.created", payload: { id: id }, event_id: id, subject: dest_subject)
          published << id
        rescue StandardError => e
          errors << e
        end
        sleep 0.01
      end
    end

    timings = nodes.map do |node|
      started = monotonic
      out, status = Open3.capture2e(node.binary, "--signal", "ldm=#{node.pid}")
      raise "nats-server --signal ldm failed: #{out}" unless status.success?

      eventually(timeout: 40, interval: 0.05) { !node.running? }
      exited = monotonic - started
      node.start
      wait_settled
      [node.server_name, exited.round(2), (monotonic - started).round(2)]
    end
    sleep 1 # the scenario: publishing goes on a second past the last restart
    stop = true
    publisher.join(120)
    ids = Array.new(published.size) { published.pop }
    failures = Array.new(errors.size) { errors.pop }
    eventually(timeout: 60, interval: 0.2) { (ids - calls.distinct_ids).empty? }

    puts <<~FIGURES

      == lame-duck rolling restart (nats-server #{@binary[:version]}) ==
      #{timings.map { |name, exited, back| "  #{name}: exited #{exited}s after --signal ldm, back and current after #{back}s" }.join("\n")}
      events published: #{ids.size}; errors raised to the application: #{failures.size}
      consumer handled: #{calls.size} (#{calls.distinct_ids.size} distinct, #{calls.size - calls.distinct_ids.size} duplicates)
    FIGURES

    expect(failures.map { |e| "#{e.class}: #{e.message}" }).to eq([])
    expect(ids.size).to be > 100
    expect(consumer_errors).to be_empty
  end

  it "makes R1 streams by default and R3 with stream_replicas: 3" do
    configure_bridge(server: NatsServer.urls(nodes))
    JetstreamBridge.ensure_topology!
    expect(JSON.parse(native_client.stream_info(stream_name)).dig("config", "num_replicas")).to eq(1)
    configure_bridge(server: NatsServer.urls(nodes), stream_replicas: 3)
    JetstreamBridge.ensure_topology!
    info = JSON.parse(native_client.stream_info(stream_name))
    expect(info.dig("config", "num_replicas")).to eq(3)
    expect(info.dig("cluster", "replicas").size).to eq(2)
  end

  it "says so when an existing stream has fewer replicas than stream_replicas asks for" do
    configure_bridge(server: NatsServer.urls(nodes), stream_replicas: 1)
    JetstreamBridge.ensure_topology!
    env = bridge_env
    configure_bridge(server: NatsServer.urls(nodes), stream_replicas: 3, env: env)
    report = JetstreamBridge.ensure_topology!
    replicas = JSON.parse(native_client.stream_info(stream_name)).dig("config", "num_replicas")
    expect(replicas == 3 || log_output.match?(/replica/i)).to be(true), "report #{report.inspect}, num_replicas #{replicas}"
  end

  it "uses every URL: connects past dead ones, and fails over when its server is killed" do
    dead = NatsServer.free_ports(2, exclude: nodes.map(&:port)).map { |p| "nats://127.0.0.1:#{p}" }
    configure_bridge(server: [*dead, *nodes.map(&:url)].join(","), stream_replicas: 3, request_timeout: "2s",
                     publish_attempts: 40, retry_strategy: :linear)
    expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 1 })).to be(true)
    wait_settled(durable: nil)
    name = native_client.server_info["server_name"]
    node = nodes.find { |n| n.server_name == name }
    node.kill
    begin
      expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 2 })).to be(true)
      expect(native_client.server_info["server_name"]).not_to eq(name)
      expect(JetstreamBridge.connected?).to be(true)
    ensure
      node.start
      wait_settled(durable: nil)
    end
  end

  it "retries a publish through a stream leader election (no responders) instead of reporting a missing stream" do
    # request_timeout 2s, default attempts (3): an election takes 4-9 s, during which the
    # publish gets "no responders" and the JetStream API (STREAM.LIST) times out.
    configure_bridge(server: NatsServer.urls(nodes), stream_replicas: 3, request_timeout: "2s")
    JetstreamBridge.ensure_topology!
    expect(JetstreamBridge.publish(event_type: "user.created", payload: { id: 0 })).to be(true)
    wait_settled(durable: nil)
    leader = stream_leader_apart_from_meta_leader
    leader.kill
    started = monotonic
    batch = JetstreamBridge.publish_batch([{ event_type: "user.created", payload: { id: 1 } }])
    single = begin
      JetstreamBridge.publish(event_type: "user.created", payload: { id: 2 }, event_id: "#{bridge_env}-election")
    rescue JetstreamBridge::Error => e
      e
    end
    took = monotonic - started
    leader.start
    wait_settled(durable: nil)
    puts "\n== during a stream leader election: publish_batch failed rows #{batch.failed.map { |f| f[2] }.inspect}; " \
         "publish => #{single.inspect[0, 160]} after #{took.round(2)}s =="
    expect(single).to be(true)
    # A row fails as "publish again" (the leaderless stream, or its ack timing out during the
    # election), never as a missing stream.
    expect(batch.failed.map { |f| f[2] }).to all(satisfy { |label| %w[StreamUnavailableError PublishTimeoutError].include?(label) })
  end
end
