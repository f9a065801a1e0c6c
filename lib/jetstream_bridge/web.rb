# frozen_string_literal: true

require "rack"
require_relative "../jetstream_bridge"
require_relative "web/view"
require_relative "web/csrf"
require_relative "web/throughput"
require_relative "web/chart"
require_relative "web/rows"
require_relative "web/overview"
require_relative "web/dead_letters_page"
require_relative "web/outbox_page"
require_relative "web/inbox_page"

module JetstreamBridge
  # The operators' dashboard: a Rack app, server-rendered, no JavaScript.
  #
  #   # config/routes.rb                          # config.ru
  #   mount JetstreamBridge::Web => "/jetstream"  run JetstreamBridge::Web
  #
  # It reads through the gem's own APIs (health_check, DeadLetters, the outbox and inbox
  # models, the stream's info) when a page is requested, and runs nothing in between.
  # Every action is a POST carrying a CSRF token (Web::Csrf); `read_only = true` hides and
  # refuses them. It has no authentication of its own: mount it behind the app's (README).
  class Web
    class << self
      # true: pages only, every action refused (403) and no button shown.
      attr_accessor :read_only

      # Seconds between the overview's reloads (a meta refresh the page can turn off).
      attr_accessor :refresh_seconds

      def call(env) = new(env).response
    end
    self.read_only = false
    self.refresh_seconds = 10

    # [method, path pattern, handler]: the page objects answer the request.
    ROUTES = [
      ["GET", %r{\A/?\z}, ->(web, _) { Overview.new(web).show }],
      ["GET", %r{\A/dead_letters/?\z}, ->(web, _) { DeadLettersPage.new(web).index }],
      ["GET", %r{\A/dead_letters/(\d+)/?\z}, ->(web, m) { DeadLettersPage.new(web).show(m[1]) }],
      ["GET", %r{\A/dead_letters/(\d+|all)/(replay|discard)\z}, ->(web, m) { DeadLettersPage.new(web).confirm(m[1], m[2]) }],
      ["POST", %r{\A/dead_letters/(\d+|all)/(replay|discard)\z}, ->(web, m) { DeadLettersPage.new(web).act(m[1], m[2]) }],
      ["GET", %r{\A/outbox/?\z}, ->(web, _) { OutboxPage.new(web).index }],
      ["GET", %r{\A/outbox/(\d+|all)/retry\z}, ->(web, m) { OutboxPage.new(web).confirm(m[1]) }],
      ["POST", %r{\A/outbox/(\d+|all)/retry\z}, ->(web, m) { OutboxPage.new(web).retry(m[1]) }],
      ["GET", %r{\A/inbox/?\z}, ->(web, _) { InboxPage.new(web).index }]
    ].freeze

    attr_reader :request, :csrf

    def initialize(env)
      @request = Rack::Request.new(env)
      @csrf = Csrf.new(env)
    end

    def response
      method = request.request_method == "HEAD" ? "GET" : request.request_method
      return refuse(403, "This dashboard is read-only.") if method == "POST" && read_only?
      return refuse(403, "Missing or invalid CSRF token: reload the page and try again.") if method == "POST" && !csrf.valid?

      path = request.path_info
      ROUTES.each do |verb, pattern, handler|
        match = verb == method && pattern.match(path)
        return handler.call(self, match) if match
      end
      ROUTES.any? { |_, pattern, _| pattern.match?(path) } ? refuse(405, "Method not allowed.") : refuse(404, "Not found.")
    end

    def read_only? = self.class.read_only ? true : false

    # The URL of a dashboard path, under where the app is mounted.
    def url(path, params = {})
      query = params.compact.reject { |_, v| v == "" }
      "#{request.script_name}#{path}#{"?#{Rack::Utils.build_query(query)}" unless query.empty?}"
    end

    # A page in the layout, as a Rack response.
    def page(template, title:, refresh: nil, status: 200, **locals)
      body = View.render(template, web: self, title: title, refresh: refresh, **locals)
      html = View.render(:layout, web: self, title: title, body: View::Raw.new(body), refresh: refresh)
      finish(status, html)
    end

    # 303 to a dashboard path (after an action: a reload does not repeat it).
    def redirect(path, params = {})
      csrf.apply([303, { "Location" => url(path, params), "Content-Type" => "text/plain" }, []])
    end

    def refuse(status, message)
      page(:message, title: message, status: status, message: message)
    end

    # What an action or page that failed (NATS, the database) shows: 502, redacted.
    def failed(error)
      refuse(502, "#{error.class}: #{Native.redact(error.message)}")
    end

    private

    def finish(status, html)
      headers = { "Content-Type" => "text/html; charset=utf-8", "Cache-Control" => "no-store",
                  "X-Frame-Options" => "DENY", "X-Content-Type-Options" => "nosniff",
                  "Referrer-Policy" => "same-origin",
                  "Content-Security-Policy" => "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; " \
                                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'" }
      csrf.apply([status, headers, [html]])
    end
  end
end
