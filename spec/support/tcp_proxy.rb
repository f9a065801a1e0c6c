# frozen_string_literal: true

require "socket"

# A TCP proxy on a free loopback port in front of a server. `cut` closes every connection
# through it: clients see a plain disconnect and reconnect, while the server keeps
# running with all its state (unlike a restart).
#
#   proxy = TcpProxy.new(server.port)
#   proxy.url  # => "nats://127.0.0.1:PORT"
#   proxy.cut
#   proxy.close
class TcpProxy
  def initialize(upstream_port, host: "127.0.0.1")
    @upstream = [host, upstream_port]
    @listener = TCPServer.new(host, 0)
    @sockets = []
    @mutex = Mutex.new
    @acceptor = Thread.new { accept_loop }
    @acceptor.report_on_exception = false
  end

  def url = "nats://127.0.0.1:#{@listener.addr[1]}"

  # Closes every connection made so far; new ones are proxied as before. A shutdown,
  # not just a close: the fd is still in use by the piping thread's read, and close
  # alone would send nothing to the peer until that read returned.
  def cut
    @mutex.synchronize do
      @sockets.each do |socket|
        socket.shutdown(Socket::SHUT_RDWR)
      rescue IOError, SystemCallError
        nil # closed already
      end.clear
    end
  end

  def close
    @acceptor.kill
    @listener.close
    cut
  end

  private

  def accept_loop
    loop do
      client = @listener.accept
      server = TCPSocket.new(*@upstream)
      @mutex.synchronize { @sockets.push(client, server) }
      [[client, server], [server, client]].each do |from, to|
        Thread.new { pipe(from, to) }.report_on_exception = false
      end
    end
  end

  def pipe(from, to)
    IO.copy_stream(from, to)
  rescue IOError, SystemCallError
    nil
  ensure
    [from, to].each { |s| s.close rescue nil } # rubocop:disable Style/RescueModifier
  end
end
