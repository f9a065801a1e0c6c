# frozen_string_literal: true

module JetstreamBridge
  class Web
    # Messages stored per second, from the stream's last sequence as the overview saw it
    # each time it was requested: a small ring per stream, in this process. Nothing samples
    # between requests, so the chart has a point per page view (a meta refresh every
    # Web.refresh_seconds while the overview is open) and gaps where nobody looked.
    module Throughput
      # Samples kept per stream, and how far back the chart looks.
      SIZE = 180
      WINDOW = 15 * 60
      Sample = Struct.new(:at, :last_seq)
      # A rate between two samples: `at` the later one's time, `per_second` messages/s.
      Rate = Struct.new(:at, :per_second)

      @rings = {}
      @mutex = Mutex.new

      module_function

      # Records the stream's last sequence now; returns the rates of the last WINDOW seconds.
      def sample(stream, last_seq, now: Background.monotonic)
        @mutex.synchronize do
          ring = (@rings[stream] ||= [])
          ring.shift while ring.size >= SIZE
          ring << Sample.new(now, last_seq.to_i) unless ring.last && now - ring.last.at < 0.5
          rates(ring, now)
        end
      end

      def rates(ring, now)
        ring.each_cons(2).filter_map do |a, b|
          next if now - b.at > WINDOW || b.last_seq < a.last_seq # a new stream: no rate across it

          Rate.new(b.at - now, (b.last_seq - a.last_seq) / (b.at - a.at))
        end
      end

      def clear
        @mutex.synchronize { @rings.clear }
      end
    end
  end
end
