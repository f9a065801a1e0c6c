# frozen_string_literal: true

require "socket"

# A TCP proxy on a free loopback port in front of a server. `cut` ends every connection
# through it: clients see a disconnect and reconnect (through the proxy again), while the
# server keeps running with all its state (unlike a restart). `cut(half_open: true)`
# leaves the server's side open, as a network partition does: the server goes on
# thinking the old connection alive (until its ping timeout) and may send to it.
#
#   proxy = TcpProxy.new(server.port)
#   proxy.url  # => "nats://127.0.0.1:PORT"
#   proxy.cut
#   proxy.close
class TcpProxy
  Pair = Struct.new(:client, :server, :half_open)

  def initialize(upstream_port, host: "127.0.0.1")
    @upstream = [host, upstream_port]
    @listener = TCPServer.new(host, 0)
    @pairs = []
    @lingering = []
    @mutex = Mutex.new
    @acceptor = Thread.new { accept_loop }
    @acceptor.report_on_exception = false
  end

  def url = "nats://127.0.0.1:#{@listener.addr[1]}"

  # Ends every connection made so far; new ones are proxied as before.
  def cut(half_open: false)
    @mutex.synchronize do
      @pairs.each do |pair|
        pair.half_open = half_open
        shut(pair.client)
        half_open ? @lingering << pair.server : shut(pair.server)
      end.clear
    end
  end

  def close
    @acceptor.kill
    @listener.close
    cut
    @mutex.synchronize { @lingering.each { |socket| shut(socket) }.clear }
  end

  private

  def accept_loop
    loop do
      pair = Pair.new(@listener.accept, TCPSocket.new(*@upstream), false)
      @mutex.synchronize { @pairs << pair }
      [[pair.client, pair.server], [pair.server, pair.client]].each do |from, to|
        Thread.new { pipe(pair, from, to) }.report_on_exception = false
      end
    end
  end

  # Copies until one side ends, then ends the other (unless cut half-open).
  def pipe(pair, from, to)
    IO.copy_stream(from, to)
  rescue IOError, SystemCallError
    nil
  ensure
    shut(to) unless pair.half_open
  end

  # Shut down before the close: the fd is in use by a piping thread's read, and a close
  # alone sends nothing to the peer until that read returns.
  def shut(socket)
    socket.shutdown(Socket::SHUT_RDWR)
  rescue IOError, SystemCallError
    nil # ended already
  ensure
    socket.close
  end
end
