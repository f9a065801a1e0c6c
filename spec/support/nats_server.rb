# frozen_string_literal: true

require "fileutils"
require "json"
require "net/http"
require "socket"
require "tmpdir"
require_relative "nats_binaries"

# A real `nats-server -js` for the specs, on a free loopback port with its own temporary
# store directory. No dependency on the gem.
#
#   server = NatsServer.new.start          # NatsBinaries.default, waits until ready
#   server.url                             # => "nats://127.0.0.1:PORT"
#   server.restart                         # same port, same store dir: streams persist
#   server.kill                            # SIGKILL, for fault tests
#   server.cleanup                         # stop and remove the temp dir
#
#   NatsServer.with_server { |s| ... }                  # started, cleaned up after the block
#   NatsServer.with_server(config: "authorization { token: s3cr3t }") { |s| ... }
#   nodes = NatsServer.cluster(3)                       # 3-node JetStream cluster
#   NatsServer.cluster(3) { |nodes| ... }               # ... cleaned up after the block
#
# Every server ever created is killed and its temp dir removed at process exit, even
# when a spec fails or the run is interrupted (at_exit safety net).
#
# Readiness (bounded by ready_timeout, default 10 s): the process is alive, the client
# port accepts TCP, the server sends its INFO and answers `CONNECT {}` + `PING` with
# `PONG` (only INFO is required when the INFO says auth or TLS is required), and the
# monitoring endpoint's /healthz answers 200, which for JetStream means the account is
# usable; in a cluster it also means that a meta leader has been elected.
class NatsServer
  HOST = "127.0.0.1"
  DEFAULT_READY_TIMEOUT = 10
  DEFAULT_STOP_TIMEOUT = 15
  LOG_TAIL_LINES = 40

  class Error < StandardError; end
  class NotReady < Error; end

  attr_reader :binary, :port, :monitor_port, :cluster_port, :cluster_name, :routes,
              :server_name, :dir, :store_dir, :log, :config_file, :pid, :ready_timeout

  # binary:        path String or a NatsBinaries entry ({path:, version:}); default NatsBinaries.default
  # port:          client port (default: a free one, kept for the server's whole life)
  # config:        extra config file text (auth, TLS, limits, ...); command-line flags for
  #                port/host/store/cluster still win over it
  # server_name:   -n (required for JetStream clusters; generated there)
  # cluster:       {name:, port:, routes: [ports of the other nodes]} (see NatsServer.cluster)
  # monitor:       start the HTTP monitoring endpoint (used for /healthz readiness) on a
  #                free port (true), on the given port (Integer), or not at all (false)
  # jetstream:     pass -js (default true)
  # args:          more command-line arguments
  # ready_timeout: seconds to wait for readiness on each start
  def initialize(binary: nil, port: nil, config: nil, server_name: nil, cluster: nil,
                 monitor: true, jetstream: true, args: [], ready_timeout: DEFAULT_READY_TIMEOUT)
    @binary = resolve_binary(binary)
    @dir = Dir.mktmpdir("nats-server-")
    self.class.register(self)
    @store_dir = File.join(@dir, "store")
    FileUtils.mkdir_p(@store_dir)
    @log = File.join(@dir, "nats-server.log")
    @port = port || self.class.free_ports(1).first
    @monitor_port = case monitor
                    when Integer then monitor
                    when nil, false then nil
                    else self.class.free_ports(1, exclude: [@port]).first
                    end
    @server_name = server_name
    @jetstream = jetstream
    @extra_args = args.map(&:to_s)
    @ready_timeout = ready_timeout
    if cluster
      @cluster_name = cluster.fetch(:name)
      @cluster_port = cluster.fetch(:port)
      @routes = Array(cluster.fetch(:routes, []))
    end
    if config
      @config_file = File.join(@dir, "nats.conf")
      File.write(@config_file, config)
    end
    @pid = nil
    @last_status = nil
  end

  # --- class helpers -----------------------------------------------------------------

  class << self
    # Start a server, yield it, always clean it up. Without a block: return it started.
    def with_server(**opts)
      server = new(**opts)
      begin
        server.start
      rescue StandardError
        server.cleanup
        raise
      end
      return server unless block_given?

      begin
        yield server
      ensure
        server.cleanup
      end
    end

    # Start an n-node JetStream cluster on loopback (full mesh of routes; every node has
    # its own store dir and server_name, all share the cluster name) and wait until each
    # node is ready, a meta leader included. Returns the nodes, or yields them and cleans
    # them up after the block.
    def cluster(size = 3, binary: nil, name: nil, config: nil, ready_timeout: 30, **opts)
      raise ArgumentError, "a cluster needs at least 2 nodes" if size < 2

      name ||= "jsb-test-#{Process.pid}-#{rand(1 << 24).to_s(16)}"
      # All ports at once, so that no two nodes can be handed the same one.
      ports = free_ports(size * 3).each_slice(size).to_a
      client_ports, cluster_ports, monitor_ports = ports
      nodes = size.times.map do |i|
        new(binary: binary, port: client_ports[i], monitor: monitor_ports[i], config: config,
            server_name: "#{name}-n#{i + 1}", ready_timeout: ready_timeout,
            cluster: { name: name, port: cluster_ports[i],
                       routes: cluster_ports.reject.with_index { |_, j| j == i } },
            **opts)
      end
      begin
        nodes.each { |n| n.start(wait: false) }  # all first: JetStream needs a quorum
        nodes.each(&:wait_until_ready)
      rescue StandardError
        nodes.each(&:cleanup)
        raise
      end
      return nodes unless block_given?

      begin
        yield nodes
      ensure
        nodes.each(&:cleanup)
      end
    end

    # "nats://127.0.0.1:A,nats://127.0.0.1:B,..." for a list of servers.
    def urls(servers)
      servers.map(&:url).join(",")
    end

    # `count` distinct free loopback TCP ports (all bound at once, so no duplicates).
    def free_ports(count, exclude: [])
      sockets = []
      ports = []
      while ports.size < count
        s = TCPServer.new(HOST, 0)
        sockets << s
        port = s.addr[1]
        ports << port unless exclude.include?(port) || ports.include?(port)
      end
      ports
    ensure
      sockets&.each(&:close)
    end

    def register(server)
      registry_mutex.synchronize { registry << server }
    end

    def unregister(server)
      registry_mutex.synchronize { registry.delete(server) }
    end

    # Kill every server this process started and remove their temp dirs.
    def cleanup_all
      registry_mutex.synchronize { registry.dup }.each do |server|
        server.cleanup
      rescue StandardError => e
        warn "NatsServer cleanup of #{server.dir}: #{e.class}: #{e.message}"
      end
    end

    private

    def registry
      @registry ||= []
    end

    def registry_mutex
      @registry_mutex ||= Mutex.new
    end
  end

  at_exit { NatsServer.cleanup_all }

  # --- lifecycle ---------------------------------------------------------------------

  # Spawn the server (same port and store dir every time) and, unless wait: false, wait
  # until it is ready. wait: :protocol skips /healthz (e.g. to bring up one cluster node
  # while its peers are down, when no meta leader can exist). Returns self.
  def start(wait: true, timeout: ready_timeout)
    raise Error, "nats-server already running (pid #{@pid}) on port #{port}" if running?
    raise Error, "#{dir} was cleaned up" unless File.directory?(dir)

    File.open(log, "a") { |f| f.puts "=== #{Time.now} starting: #{command.join(' ')}" }
    release_port
    @pid = Process.spawn(*command, pgroup: true, in: File::NULL, out: [log, "a"], err: [:child, :out])
    @last_status = nil
    wait_until_ready(timeout: timeout, healthz: wait != :protocol) if wait
    self
  end

  # SIGTERM (graceful shutdown), then wait (SIGKILL after `timeout` seconds). Note that
  # nats-server 2.9 exits with status 1 after a graceful SIGTERM shutdown, 2.10+ with 0.
  # Returns self.
  def stop(timeout: DEFAULT_STOP_TIMEOUT)
    return self unless running?

    signal("TERM")
    signal("KILL") unless wait_for_exit(timeout)
    wait_for_exit(5)
    hold_port
    self
  end

  # SIGKILL (no graceful shutdown: what a crash looks like to clients). Returns self.
  def kill
    return self unless running?

    signal("KILL")
    wait_for_exit(5)
    hold_port
    self
  end

  # stop (or kill: true) then start on the same port with the same store dir.
  def restart(kill: false, wait: true)
    kill ? self.kill : stop
    start(wait: wait)
  end

  # Kill the process, remove the temp dir, forget the server. Idempotent.
  def cleanup
    kill
    release_port
    FileUtils.rm_rf(dir)
    self.class.unregister(self)
    self
  end

  # While stopped, the client port stays bound (not listening) until the next start: a
  # client is refused as by a stopped server, and no other spec process's server (the
  # rspec workers pick free ports side by side) starts on it meanwhile. A CI run's "NATS
  # down" health check reached another worker's server that had taken the freed port.
  def hold_port
    return if @port_hold

    @port_hold = Socket.new(:INET, :STREAM)
    @port_hold.setsockopt(:SOCKET, :REUSEADDR, true)
    @port_hold.bind(Addrinfo.tcp(HOST, port))
  rescue SystemCallError
    release_port # taken already: nothing to hold
  end

  def release_port
    @port_hold&.close
    @port_hold = nil
  end

  def running?
    return false unless @pid

    reaped = Process.waitpid(@pid, Process::WNOHANG)
    return true if reaped.nil?

    @last_status = $?
    @pid = nil
    false
  rescue Errno::ECHILD
    @pid = nil
    false
  end

  # Exit status of the last run, once it has ended.
  def last_status
    running?
    @last_status
  end

  # --- addresses and facts -------------------------------------------------------------

  def url
    "nats://#{HOST}:#{port}"
  end

  def monitor_url
    monitor_port && "http://#{HOST}:#{monitor_port}"
  end

  def cluster_url
    cluster_port && "nats://#{HOST}:#{cluster_port}"
  end

  # "2.15.1"
  def version
    NatsBinaries.version_of(binary)
  end

  def log_tail(lines = LOG_TAIL_LINES)
    return "(no log file)" unless File.exist?(log)

    File.readlines(log).last(lines).join
  end

  # Parsed JSON from a monitoring endpoint ("varz", "jsz", "healthz", ...), or nil.
  def monitor(path)
    return nil unless monitor_port

    res = http_get(path)
    res && JSON.parse(res.body)
  rescue JSON::ParserError
    nil
  end

  def to_s
    "#<NatsServer #{url} v#{version}#{" #{server_name}" if server_name} pid=#{@pid.inspect} dir=#{dir}>"
  end
  alias inspect to_s

  # Block until the server is ready (see the class comment), or raise NotReady with the
  # reason and the tail of the server's log.
  def wait_until_ready(timeout: ready_timeout, healthz: true)
    deadline = monotonic + timeout
    reason = "not checked yet"
    loop do
      unless running?
        raise NotReady, failure_message("nats-server exited (#{@last_status.inspect}) before it was ready")
      end

      reason = readiness_problem(healthz: healthz)
      return self if reason.nil?
      break if monotonic >= deadline

      sleep 0.1
    end
    raise NotReady, failure_message("nats-server not ready after #{timeout}s: #{reason}")
  end

  # nil when ready, else why not.
  def readiness_problem(healthz: true)
    problem = protocol_problem
    return problem if problem
    return nil unless healthz && monitor_port

    res = http_get("/healthz")
    return "no answer from #{monitor_url}/healthz" unless res
    return "/healthz answered #{res.code}: #{res.body.to_s.strip[0, 200]}" unless res.code == "200"

    nil
  end

  private

  def command
    cmd = [binary, "-a", HOST, "-p", port.to_s, "-sd", store_dir]
    cmd << "-js" if @jetstream
    cmd += ["-m", monitor_port.to_s] if monitor_port
    cmd += ["-n", server_name] if server_name
    if cluster_port
      cmd += ["--cluster_name", cluster_name, "--cluster", cluster_url]
      cmd += ["--routes", routes.map { |p| "nats://#{HOST}:#{p}" }.join(",")] unless routes.empty?
    end
    cmd += ["-c", config_file] if config_file
    cmd + @extra_args
  end

  # Connect, read INFO, CONNECT + PING, expect PONG. nil when fine, else the problem.
  def protocol_problem
    sock = Socket.tcp(HOST, port, connect_timeout: 1)
    info = read_line(sock, 2)
    return "no INFO from #{url}" unless info
    return "unexpected greeting #{info.strip[0, 120].inspect}" unless info.start_with?("INFO ")

    details = JSON.parse(info.sub(/\AINFO /, "")) rescue {}
    # With auth or TLS required a plain CONNECT cannot succeed; INFO shows the server is
    # up and /healthz shows that it is ready.
    return nil if details["auth_required"] || details["tls_required"]

    sock.write("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
    while (line = read_line(sock, 2))
      return nil if line.start_with?("PONG")
      return "server answered #{line.strip.inspect}" if line.start_with?("-ERR")
    end
    "no PONG from #{url}"
  rescue SystemCallError, IOError, SocketError => e
    "#{url}: #{e.class}: #{e.message}"
  ensure
    sock&.close
  end

  def read_line(sock, timeout)
    deadline = monotonic + timeout
    buf = +""
    until buf.end_with?("\n")
      left = deadline - monotonic
      return nil if left <= 0 || !sock.wait_readable(left)

      chunk = sock.read_nonblock(4096, exception: false)
      return nil if chunk.nil?
      next if chunk == :wait_readable

      buf << chunk
    end
    buf
  end

  def http_get(path)
    Net::HTTP.start(HOST, monitor_port, open_timeout: 1, read_timeout: 2) do |http|
      http.get(path.start_with?("/") ? path : "/#{path}")
    end
  rescue StandardError
    nil
  end

  def signal(sig)
    Process.kill(sig, -@pid) # own process group (pgroup: true): the server and any child
  rescue Errno::ESRCH
    begin
      Process.kill(sig, @pid)
    rescue Errno::ESRCH
      nil
    end
  end

  def wait_for_exit(timeout)
    deadline = monotonic + timeout
    while running?
      return false if monotonic >= deadline

      sleep 0.02
    end
    true
  end

  def failure_message(headline)
    <<~MSG
      #{headline}
        binary: #{binary} (v#{version})
        command: #{command.join(' ')}
        log: #{log}
      --- last #{LOG_TAIL_LINES} lines of the log ---
      #{log_tail}
    MSG
  end

  def resolve_binary(binary)
    path = case binary
           when nil then NatsBinaries.default_path
           when Hash then binary.fetch(:path)
           else binary.to_s
           end
    raise Error, "nats-server binary #{path} is not executable" unless File.executable?(path)

    path
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
