# frozen_string_literal: true

require "erb"
require "json"

module JetstreamBridge
  class Web
    # The ERB templates in web/views, compiled once. `<%= value %>` always HTML-escapes
    # (ERB::Util.html_escape): payloads, headers and errors are user data. Markup the
    # dashboard made itself (the page inside the layout, the SVG chart, a form) is a
    # View::Raw and goes in with `<%== value %>`.
    module View
      DIR = File.expand_path("views", __dir__)

      # Markup made by the dashboard, emitted as it is.
      class Raw < String; end

      # ERB whose `<%= %>` escapes, and whose `<%== %>` takes only a Raw.
      class Template < ERB
        # ERB sets the compiler's commands here (after make_compiler): `<%= %>` escapes.
        def set_eoutvar(compiler, eoutvar = "_erbout")
          super
          compiler.insert_cmd = "#{eoutvar}.<< ::ERB::Util.html_escape"
        end
      end

      # What templates can call, besides their locals.
      class Context
        include ERB::Util

        def initialize(locals)
          locals.each { |name, value| define_singleton_method(name) { value } }
        end

        # What `<%== value %>` emits: only markup the dashboard made (a Raw).
        def raw!(value)
          raise ArgumentError, "not dashboard markup: #{value.class}" unless value.is_a?(Raw)

          value
        end

        # A form posting to `path` (with `params` in its URL): the CSRF field and one button.
        def button(path, label, params: {}, danger: false)
          Raw.new(%(<form method="post" action="#{h(web.url(path, params))}" class="inline">) +
                  %(<input type="hidden" name="#{h(Csrf::FIELD)}" value="#{h(web.csrf.token)}">) +
                  %(<button type="submit"#{' class="danger"' if danger}>#{h(label)}</button></form>))
        end

        def link(label, path, params = {}) = Raw.new(%(<a href="#{h(web.url(path, params))}">#{h(label)}</a>))

        def number(value)
          return "–" if value.nil?

          value.to_i.to_s.reverse.scan(/\d{1,3}/).join(",").reverse.then { |s| value.to_i.negative? ? "-#{s}" : s }
        end

        def bytes(value)
          return "–" if value.nil?

          units = %w[B KB MB GB TB]
          size = value.to_f
          unit = units.shift
          while size >= 1024 && !units.empty?
            size /= 1024
            unit = units.shift
          end
          unit == "B" ? "#{value.to_i} B" : format("%.1f %s", size, unit)
        end

        # "3m 20s"-style age of a number of seconds.
        def age(seconds)
          return "–" if seconds.nil?

          s = seconds.to_f
          return format("%.1fs", s) if s < 60
          return "#{(s / 60).floor}m #{(s % 60).floor}s" if s < 3600
          return "#{(s / 3600).floor}h #{((s % 3600) / 60).floor}m" if s < 86_400

          "#{(s / 86_400).floor}d #{((s % 86_400) / 3600).floor}h"
        end

        def time(value)
          return "–" if value.nil? || value.to_s.empty?

          t = value.is_a?(Time) ? value : Time.parse(value.to_s)
          t.utc.strftime("%Y-%m-%d %H:%M:%S UTC")
        rescue ArgumentError
          value.to_s
        end

        # A body as pretty JSON when it is JSON, else as it is.
        def pretty(body)
          JSON.pretty_generate(JSON.parse(body))
        rescue JSON::ParserError
          body.to_s
        end

        def percent(part, whole)
          return nil if part.nil? || whole.nil? || whole.to_f <= 0

          (100.0 * part.to_f / whole.to_f).clamp(0, 100)
        end

        def binding_for = binding
      end

      module_function

      def render(name, **locals)
        template(name).result(Context.new(locals).binding_for)
      end

      def template(name)
        (@templates ||= {})[name] ||= begin
          path = File.join(DIR, "#{name}.html.erb")
          source = File.read(path).gsub(/<%==(.*?)%>/m) { "<% _erbout.<<(raw!(#{Regexp.last_match(1)})) %>" }
          Template.new(source, trim_mode: "-").tap { |erb| erb.filename = path }
        end
      end
    end
  end
end
