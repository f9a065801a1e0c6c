# frozen_string_literal: true

require "json"
require "socket"

# A few JetStream API calls over a raw NATS socket, bypassing the gem, to inspect and
# manipulate the server independently of the code under test (consumer info, deleting or
# pre-creating a durable, pulling and acking by hand as another client would).
#
#   NatsApi.request(url, "$JS.API.CONSUMER.INFO.S.D", "{}")   # => parsed JSON reply
#   NatsApi.consumer_info(url, "S", "D")                     # => Hash, nil when absent
#   NatsApi.delete_consumer(url, "S", "D")
#   NatsApi.create_consumer(url, "S", { durable_name: "D", ... })
#   NatsApi.fetch_and_ack(url, "S", "D", 5)                  # => [[subject, body], ...]
#
# No dependency on the gem.
module NatsApi
  class Error < StandardError; end

  # One plain NATS connection with buffered reads.
  class Conn
    def initialize(url, timeout)
      userinfo = url[%r{\A\w+://(.*)@}, 1]
      host, port = url.sub(%r{\A\w+://}, "").sub(/.*@/, "").split(":")
      @timeout = timeout
      @sock = Socket.tcp(host, Integer(port), connect_timeout: timeout)
      @buf = +""
      line = read_line
      raise Error, "no INFO from #{url}" unless line&.start_with?("INFO")

      options = { verbose: false, pedantic: false, headers: true, no_responders: true }
      if userinfo # user:password in the URL
        user, pass = userinfo.split(":", 2)
        options.merge!(user: user, pass: pass)
      end
      write("CONNECT #{JSON.generate(options)}\r\n")
      @sid = 0
    end

    def write(data)
      @sock.write(data)
    end

    def subscribe(subject)
      @sid += 1
      write("SUB #{subject} #{@sid}\r\n")
      @sid
    end

    def publish(subject, body, reply: nil)
      body = body.to_s
      write("PUB #{subject}#{" #{reply}" if reply} #{body.bytesize}\r\n#{body}\r\n")
    end

    # Round trip: everything written before has been processed by the server.
    def ping
      write("PING\r\n")
      loop do
        line = read_line or raise Error, "no PONG within #{@timeout}s"
        return if line.start_with?("PONG")
      end
    end

    # Next message: {subject:, reply:, headers: String or nil, status: Integer or nil, body:},
    # or nil on timeout. Answers server PINGs meanwhile.
    def next_message
      loop do
        line = read_line or return nil
        case line
        when /\APING/ then write("PONG\r\n")
        when /\A-ERR/ then raise Error, "server error: #{line.strip}"
        when /\AMSG /
          parts = line.split
          size = Integer(parts.last)
          reply = parts.size == 5 ? parts[3] : nil
          body = read_exactly(size + 2)[0, size]
          return { subject: parts[1], reply: reply, headers: nil, status: nil, body: body }
        when /\AHMSG /
          parts = line.split
          hdr_len = Integer(parts[-2])
          total = Integer(parts[-1])
          reply = parts.size == 6 ? parts[3] : nil
          data = read_exactly(total + 2)[0, total]
          headers = data[0, hdr_len]
          status = headers[/\ANATS\/1\.0 (\d+)/, 1]&.to_i
          return { subject: parts[1], reply: reply, headers: headers, status: status, body: data[hdr_len..] }
        end
      end
    end

    def close
      @sock.close
    rescue IOError
      nil
    end

    private

    def fill
      raise Error, "timed out after #{@timeout}s" unless @sock.wait_readable(@timeout)

      chunk = @sock.read_nonblock(65_536, exception: false)
      raise Error, "connection closed" if chunk.nil?

      @buf << chunk unless chunk == :wait_readable
    end

    def read_line
      until (i = @buf.index("\r\n"))
        fill
      end
      @buf.slice!(0, i + 2)
    rescue Error => e
      raise unless e.message.start_with?("timed out")

      nil
    end

    def read_exactly(size)
      fill while @buf.bytesize < size
      @buf.slice!(0, size)
    end
  end

  module_function

  # Sends `body_json` (a String, or anything JSON-able) to `subject` with a reply inbox
  # and returns the parsed reply. Raises if nothing answers within `timeout` seconds.
  def request(url, subject, body_json = "", timeout: 5)
    body = body_json.is_a?(String) ? body_json : JSON.generate(body_json)
    with_conn(url, timeout) do |c|
      inbox = "_INBOX.natsapi.#{rand(1 << 48).to_s(16)}"
      c.subscribe(inbox)
      c.publish(subject, body, reply: inbox)
      msg = c.next_message or raise Error, "no reply to #{subject} within #{timeout}s"
      raise Error, "no responders for #{subject}" if msg[:status] == 503

      JSON.parse(msg[:body])
    end
  end

  # The consumer's info (config, state), or nil when it does not exist.
  def consumer_info(url, stream, durable)
    reply = request(url, "$JS.API.CONSUMER.INFO.#{stream}.#{durable}", "")
    return nil if reply.dig("error", "code") == 404
    raise Error, "consumer info #{stream}/#{durable}: #{reply['error'].inspect}" if reply["error"]

    reply
  end

  def delete_consumer(url, stream, durable)
    reply = request(url, "$JS.API.CONSUMER.DELETE.#{stream}.#{durable}", "")
    raise Error, "consumer delete #{stream}/#{durable}: #{reply['error'].inspect}" if reply["error"]

    reply
  end

  # Creates a durable pull consumer with exactly `config` (string or symbol keys).
  def create_consumer(url, stream, config)
    durable = config[:durable_name] || config["durable_name"]
    reply = request(url, "$JS.API.CONSUMER.DURABLE.CREATE.#{stream}.#{durable}",
                    { stream_name: stream, config: config })
    raise Error, "consumer create #{stream}/#{durable}: #{reply['error'].inspect}" if reply["error"]

    reply
  end

  # Pulls up to `batch` messages from a durable pull consumer and acks each (as a plain
  # client would). Returns [[subject, body], ...].
  def fetch_and_ack(url, stream, durable, batch, timeout: 5)
    with_conn(url, timeout) do |c|
      inbox = "_INBOX.natsapi.#{rand(1 << 48).to_s(16)}"
      c.subscribe(inbox)
      c.publish("$JS.API.CONSUMER.MSG.NEXT.#{stream}.#{durable}",
                JSON.generate(batch: batch, expires: (timeout * 1e9 / 2).to_i), reply: inbox)
      got = []
      while got.size < batch
        msg = c.next_message or break
        break if msg[:status] # 404/408: nothing more

        got << [msg[:subject], msg[:body]]
        c.publish(msg[:reply], "+ACK") if msg[:reply]
      end
      c.ping
      got
    end
  end

  # The stored message with this stream sequence: [subject, body (binary), {header =>
  # value}] (values of a repeated header joined with ","), or nil when there is none.
  def get_message(url, stream, seq)
    reply = request(url, "$JS.API.STREAM.MSG.GET.#{stream}", { seq: seq })
    return nil if reply.dig("error", "code") == 404
    raise Error, "message get #{stream}/#{seq}: #{reply['error'].inspect}" if reply["error"]

    message = reply.fetch("message")
    [message["subject"], message["data"] ? message["data"].unpack1("m") : "".b, parse_headers(message["hdrs"])]
  end

  def parse_headers(base64)
    return {} unless base64

    lines = base64.unpack1("m").force_encoding(Encoding::UTF_8).split("\r\n").drop(1).reject(&:empty?)
    lines.each_with_object({}) do |line, headers|
      name, value = line.split(":", 2)
      value = value.to_s.strip
      headers[name] = headers.key?(name) ? "#{headers[name]},#{value}" : value
    end
  end

  # Publishes with a raw header block ({"Name" => "value"}) as any client could, and
  # returns the JetStream ack (parsed JSON).
  def publish_with_headers(url, subject, body, headers, timeout: 5)
    block = "NATS/1.0\r\n#{headers.map { |k, v| "#{k}: #{v}\r\n" }.join}\r\n".b
    body = body.to_s.b
    with_conn(url, timeout) do |c|
      inbox = "_INBOX.natsapi.#{rand(1 << 48).to_s(16)}"
      c.subscribe(inbox)
      c.write("HPUB #{subject} #{inbox} #{block.bytesize} #{block.bytesize + body.bytesize}\r\n".b + block + body + "\r\n".b)
      msg = c.next_message or raise Error, "no ack for #{subject} within #{timeout}s"
      JSON.parse(msg[:body])
    end
  end

  def with_conn(url, timeout)
    conn = Conn.new(url, timeout)
    yield conn
  ensure
    conn&.close
  end
end
