# frozen_string_literal: true

# Self-test of the test-server helpers (spec/support/nats_server.rb, nats_binaries.rb).
# Plain RSpec; does not load the gem:  rspec spec/support_nats_server_spec.rb

require "json"
require "socket"
require_relative "support/child_ruby"
require_relative "support/nats_server"

# Just enough of the NATS client protocol to check a server by hand.
module RawNats
  module_function

  def connect(url)
    host, port = url.delete_prefix("nats://").split(":")
    sock = Socket.tcp(host, Integer(port), connect_timeout: 2)
    info = gets(sock)
    [sock, info]
  end

  def gets(sock, timeout = 5)
    raise "no data within #{timeout}s" unless sock.wait_readable(timeout)

    sock.gets("\r\n")
  end

  # INFO line, then CONNECT {} + PING; returns [info_hash, reply_line].
  def ping(url)
    sock, info = connect(url)
    sock.write("CONNECT {}\r\nPING\r\n")
    reply = gets(sock)
    reply = gets(sock) while reply&.start_with?("+OK")
    [info, reply]
  ensure
    sock&.close
  end

  # Request/reply over core NATS (used for the JetStream API); returns the reply payload.
  def request(url, subject, payload)
    sock, = connect(url)
    inbox = "_INBOX.selftest.#{rand(1 << 32)}"
    sock.write("CONNECT {\"verbose\":false}\r\nSUB #{inbox} 1\r\n" \
               "PUB #{subject} #{inbox} #{payload.bytesize}\r\n#{payload}\r\nPING\r\n")
    loop do
      line = gets(sock)
      raise "connection closed" unless line
      raise "server error: #{line}" if line.start_with?("-ERR")
      next unless line.start_with?("MSG ")

      size = Integer(line.split.last)
      body = +""
      body << sock.read(size + 2 - body.bytesize) while body.bytesize < size + 2
      return body.byteslice(0, size)
    end
  ensure
    sock&.close
  end

  def accepts_tcp?(url)
    sock, = connect(url)
    true
  rescue SystemCallError, IOError, RuntimeError
    false
  ensure
    sock&.close
  end
end

RSpec.describe NatsBinaries do
  it "finds at least one nats-server with a version" do
    expect(described_class.all).not_to be_empty
    described_class.all.each do |b|
      expect(File.executable?(b[:path])).to be(true)
      expect(b[:version]).to match(/\A\d+\.\d+\.\d+/)
    end
  end

  it "finds Debian's packaged server (2.9 on Debian 12, 2.10 in trixie) and the venv's 2.15 (installed by bin/setup)" do
    expect(described_class.all).to include(a_hash_including(path: NatsBinaries::DEBIAN_BIN),
                                           a_hash_including(path: NatsBinaries::VENV_BIN, version: start_with("2.15.")))
  end

  it "defaults to NATS_SERVER_BIN, else 2.15, else 2.9" do
    if ENV["NATS_SERVER_BIN"]
      expect(described_class.default[:path]).to eq(File.expand_path(ENV["NATS_SERVER_BIN"]))
    else
      expect(described_class.default[:version]).to start_with("2.15.")
    end
  end
end

RSpec.describe NatsServer do
  NatsBinaries.all.each do |bin|
    context "with nats-server #{bin[:version]} (#{bin[:path]})" do
      it "starts on a free loopback port, speaks NATS, restarts on the same port keeping streams, and dies on kill" do
        NatsServer.with_server(binary: bin) do |server|
          expect(server).to be_running
          expect(server.version).to eq(bin[:version])
          expect(server.url).to eq("nats://127.0.0.1:#{server.port}")
          expect(File.directory?(server.store_dir)).to be(true)
          expect(File.size(server.log)).to be > 0

          info, reply = RawNats.ping(server.url)
          expect(info).to start_with("INFO ")
          info = JSON.parse(info.delete_prefix("INFO "))
          expect(info["version"]).to eq(bin[:version])
          expect(info["jetstream"]).to be(true)
          expect(reply).to eq("PONG\r\n")

          # A stream created now must survive a restart (same store dir).
          created = JSON.parse(RawNats.request(server.url, "$JS.API.STREAM.CREATE.SELFTEST",
                                               JSON.generate(name: "SELFTEST", subjects: ["selftest.>"],
                                                             storage: "file")))
          expect(created["error"]).to be_nil
          expect(server.monitor("/jsz")["streams"]).to eq(1)

          port = server.port
          server.restart
          expect(server.port).to eq(port)
          expect(RawNats.ping(server.url).last).to eq("PONG\r\n")
          info = JSON.parse(RawNats.request(server.url, "$JS.API.STREAM.INFO.SELFTEST", ""))
          expect(info.dig("config", "name")).to eq("SELFTEST")

          server.kill
          expect(server).not_to be_running
          expect(server.last_status.termsig).to eq(Signal.list["KILL"])
          expect(RawNats.accepts_tcp?(server.url)).to be(false)

          server.start # after a crash: same port, same store
          expect(RawNats.ping(server.url).last).to eq("PONG\r\n")
          expect(server.monitor("/jsz")["streams"]).to eq(1)

          server.stop
          expect(server).not_to be_running
          # Graceful shutdown on SIGTERM; nats-server 2.9 and 2.10 then exit 1, 2.15 exits 0.
          expect(server.last_status.signaled?).to be(false)
          expect(server.last_status.exitstatus).to eq(bin[:version].start_with?("2.9.", "2.10.") ? 1 : 0)
          expect(server.log_tail(5)).to include("Server Exiting")
        end
      end

      it "takes extra config text (here: token auth)" do
        NatsServer.with_server(binary: bin, config: "authorization { token: s3cr3t }\n") do |server|
          sock, info = RawNats.connect(server.url)
          expect(JSON.parse(info.delete_prefix("INFO "))["auth_required"]).to be(true)
          sock.write("CONNECT {\"verbose\":false,\"auth_token\":\"s3cr3t\"}\r\nPING\r\n")
          expect(RawNats.gets(sock)).to eq("PONG\r\n")
        ensure
          sock&.close
        end
      end

      it "runs a 3-node JetStream cluster" do
        NatsServer.cluster(3, binary: bin) do |nodes|
          expect(nodes.size).to eq(3)
          expect(nodes.map(&:port).uniq.size).to eq(3)
          expect(nodes.map(&:store_dir).uniq.size).to eq(3)
          nodes.each do |node|
            expect(node).to be_running
            info, reply = RawNats.ping(node.url)
            expect(reply).to eq("PONG\r\n")
            expect(JSON.parse(info.delete_prefix("INFO "))["cluster"]).to eq(nodes.first.cluster_name)
          end
          metas = nodes.map { |n| n.monitor("/jsz")["meta_cluster"] }
          expect(metas.map { |m| m["cluster_size"] }).to all(eq(3))
          leaders = metas.map { |m| m["leader"] }
          expect(leaders.uniq.size).to eq(1)
          expect(nodes.map(&:server_name)).to include(leaders.first)
          expect(NatsServer.urls(nodes).split(",")).to eq(nodes.map(&:url))

          # An R3 stream, then a node crash and return.
          created = JSON.parse(RawNats.request(nodes[0].url, "$JS.API.STREAM.CREATE.R3",
                                               JSON.generate(name: "R3", subjects: ["r3.>"], num_replicas: 3)))
          expect(created["error"]).to be_nil
          nodes[1].kill
          nodes[1].start
          expect(RawNats.ping(nodes[1].url).last).to eq("PONG\r\n")
        end
      end
    end
  end

  it "cleans up servers and temp dirs at exit, even when the program fails" do
    script = <<~RUBY
      require #{File.expand_path('support/nats_server', __dir__).inspect}
      s = NatsServer.new.start
      puts s.pid, s.dir
      $stdout.flush
      raise "boom"
    RUBY
    out, _err, status = ChildRuby.capture3("-e", script)
    expect(status).not_to be_success
    pid, dir = out.split("\n")
    expect(Integer(pid)).to be > 0
    expect { Process.kill(0, Integer(pid)) }.to raise_error(Errno::ESRCH)
    expect(File.exist?(dir)).to be(false)
  end

  it "reports a server that cannot start, with its log" do
    expect { NatsServer.with_server(config: "this is { not valid") }
      .to raise_error(NatsServer::NotReady, /exited.*Parse error/m)
  end
end
