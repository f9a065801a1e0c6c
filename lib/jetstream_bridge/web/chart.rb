# frozen_string_literal: true

module JetstreamBridge
  class Web
    # The overview's throughput chart, drawn on the server as inline SVG: messages stored
    # per second (Throughput rates) over the last Throughput::WINDOW seconds.
    module Chart
      WIDTH = 640
      HEIGHT = 140
      PAD = 28
      MIN_SPAN = 10.0

      module_function

      # A View::Raw <svg>; only numbers and fixed words go into it. The x axis spans the
      # samples there are (at least MIN_SPAN seconds, at most Throughput::WINDOW).
      def svg(rates)
        window = (rates.empty? ? Throughput::WINDOW : -rates.first.at * 1.05).clamp(MIN_SPAN, Throughput::WINDOW)
        peak = [rates.map(&:per_second).max.to_f, 1.0].max
        x = ->(at) { (PAD + ((window + at) / window.to_f * (WIDTH - (2 * PAD)))).round(1) }
        y = ->(rate) { (HEIGHT - PAD - (rate / peak * (HEIGHT - (2 * PAD)))).round(1) }
        points = rates.map { |r| "#{x.call(r.at)},#{y.call(r.per_second)}" }.join(" ")
        last = rates.last
        View::Raw.new(<<~SVG)
          <svg class="chart" viewBox="0 0 #{WIDTH} #{HEIGHT}" width="#{WIDTH}" height="#{HEIGHT}" role="img" aria-label="messages stored per second">
            <line x1="#{PAD}" y1="#{HEIGHT - PAD}" x2="#{WIDTH - PAD}" y2="#{HEIGHT - PAD}" class="axis"/>
            <line x1="#{PAD}" y1="#{PAD}" x2="#{WIDTH - PAD}" y2="#{PAD}" class="grid"/>
            <text x="#{PAD}" y="#{PAD - 8}" class="label">#{format_rate(peak)} msg/s</text>
            <text x="#{PAD}" y="#{HEIGHT - 8}" class="label">-#{window >= 120 ? "#{(window / 60).round} min" : "#{window.round} s"}</text>
            <text x="#{WIDTH - PAD}" y="#{HEIGHT - 8}" class="label" text-anchor="end">now#{" · #{format_rate(last.per_second)} msg/s" if last}</text>
            #{rates.size > 1 ? %(<polyline points="#{points}" class="line"/>) : ''}
            #{rates.map { |r| %(<circle cx="#{x.call(r.at)}" cy="#{y.call(r.per_second)}" r="2" class="dot"/>) }.join}
            #{rates.empty? ? %(<text x="#{WIDTH / 2}" y="#{HEIGHT / 2}" class="label" text-anchor="middle">reload to sample</text>) : ''}
          </svg>
        SVG
      end

      def format_rate(value)
        value >= 100 ? value.round.to_s : format("%.1f", value)
      end
    end
  end
end
