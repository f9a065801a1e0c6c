# frozen_string_literal: true

require "json"

# A forked child that reports back. Forked.start { ...; a JSON-able value } runs the block
# in a child, which then leaves with exit! (the parent's at_exit hooks, its servers and
# databases, stay the parent's); #report waits for the child and is the block's value.
class Forked
  def self.start(&block)
    rd, wr = IO.pipe
    pid = fork do
      rd.close
      status = 1
      begin
        wr.write(JSON.generate(value: block.call))
        status = 0
      rescue Exception => e # rubocop:disable Lint/RescueException
        wr.write(JSON.generate(error: "#{e.class}: #{e.message}"))
      ensure
        wr.close
        exit!(status)
      end
    end
    wr.close
    new(pid, rd)
  end

  def initialize(pid, reader)
    @pid = pid
    @reader = reader
  end

  # The block's value, once the child has exited; raises with the child's error.
  def report
    out = JSON.parse(@reader.read)
    @reader.close
    Process.wait(@pid)
    raise "forked child failed: #{out['error']}" if out.key?("error")

    out.fetch("value")
  end
end
