# frozen_string_literal: true

require "rails/generators"

module JetstreamBridge
  module Generators
    # bin/rails g jetstream_bridge:health_check — JetstreamHealthController and its route.
    class HealthCheckGenerator < Rails::Generators::Base
      source_root File.expand_path("templates", __dir__)

      desc "Creates app/controllers/jetstream_health_controller.rb and routes GET /health/jetstream to it."

      ROUTE = 'get "/health/jetstream", to: "jetstream_health#show"'

      def create_controller
        # skip: a controller the user already edited is left alone; --force replaces it.
        template "jetstream_health_controller.rb", "app/controllers/jetstream_health_controller.rb", skip: true
      end

      def add_route
        routes = File.join(destination_root, "config/routes.rb")
        if behavior == :invoke && File.exist?(routes) && File.read(routes).include?("jetstream_health#show")
          say_status :skip, "config/routes.rb already routes to jetstream_health#show", :yellow
          return
        end

        route ROUTE
      end
    end
  end
end
