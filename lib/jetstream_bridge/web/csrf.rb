# frozen_string_literal: true

require "base64"
require "securerandom"
require "rack"

module JetstreamBridge
  class Web
    # The CSRF token of the dashboard's forms, checked on every POST (Web refuses a POST
    # without a valid one with 403).
    #
    # - Mounted in a Rails app that has a session: Rails' own token (the one its forms
    #   carry, `session[:_csrf_token]`), checked by Rails' own code.
    # - Otherwise (a config.ru, an API-only app without sessions): the gem's own, a random
    #   secret in a cookie (HttpOnly, SameSite=Strict, on the mount path) that the form
    #   field must match. A cross-site form cannot read the cookie, and with SameSite=Strict
    #   the browser does not even send it along.
    #
    # Tokens in forms are masked (a one-time pad, as Rails does) so that they differ on
    # every page, against compression attacks (BREACH).
    class Csrf
      FIELD = "authenticity_token"
      COOKIE = "jetstream_bridge_csrf"
      LENGTH = 32

      def initialize(env)
        @env = env
        @request = Rack::Request.new(env)
        @new_secret = nil
      end

      # The token a form carries.
      def token
        @token ||= rails? ? rails_controller.send(:form_authenticity_token) : mask(secret)
      end

      # Whether the request carries a valid token (the form field, or an X-CSRF-Token header).
      def valid?
        return rails_controller.send(:any_authenticity_token_valid?) if rails?

        cookie = @request.cookies[COOKIE]
        return false unless cookie.is_a?(String) && cookie.bytesize == encoded_length

        [param, @env["HTTP_X_CSRF_TOKEN"]].any? do |given|
          unmasked = unmask(given)
          unmasked && Rack::Utils.secure_compare(unmasked, cookie)
        end
      end

      # The Rack response, with the cookie set when this request made the secret.
      def apply(response)
        return response unless @new_secret

        Rack::Utils.set_cookie_header!(response[1], COOKIE,
                                       value: @new_secret, path: cookie_path, httponly: true, same_site: :strict,
                                       secure: @request.ssl?)
        response
      end

      # Rails' token: a Rails app with a session in this request.
      def rails?
        return @rails if defined?(@rails)

        session = @env["rack.session"]
        @rails = defined?(::ActionController::Base) && defined?(::ActionDispatch::Request::Session) &&
                 session.is_a?(::ActionDispatch::Request::Session) &&
                 (!session.respond_to?(:enabled?) || session.enabled?) ? true : false
      end

      private

      # A controller instance around this request: Rails' own token code, whichever Rails.
      def rails_controller
        @rails_controller ||= ::ActionController::Base.new.tap do |controller|
          controller.set_request!(::ActionDispatch::Request.new(@env))
        end
      end

      def param
        @request.POST[FIELD]
      rescue StandardError
        nil
      end

      def secret
        existing = @request.cookies[COOKIE]
        return existing if existing.is_a?(String) && existing.bytesize == encoded_length

        @new_secret ||= Base64.urlsafe_encode64(SecureRandom.random_bytes(LENGTH), padding: false)
      end

      def encoded_length = Base64.urlsafe_encode64("x" * LENGTH, padding: false).bytesize

      def mask(secret)
        raw = Base64.urlsafe_decode64(secret)
        pad = SecureRandom.random_bytes(LENGTH)
        Base64.urlsafe_encode64(pad + xor(pad, raw), padding: false)
      end

      # The secret a masked token hides, or nil when it is no such token.
      def unmask(given)
        return nil unless given.is_a?(String)

        raw = Base64.urlsafe_decode64(given)
        return nil unless raw.bytesize == LENGTH * 2

        Base64.urlsafe_encode64(xor(raw.byteslice(0, LENGTH), raw.byteslice(LENGTH, LENGTH)), padding: false)
      rescue ArgumentError
        nil
      end

      def xor(a, b) = a.bytes.zip(b.bytes).map { |x, y| x ^ y }.pack("C*")

      def cookie_path = @request.script_name.to_s.empty? ? "/" : @request.script_name
    end
  end
end
