# frozen_string_literal: true

require "rails/generators"

module JetstreamBridge
  module Generators
    # bin/rails g jetstream_bridge:install — the initializer plus the inbox/outbox migrations.
    class InstallGenerator < Rails::Generators::Base
      desc "Creates config/initializers/jetstream_bridge.rb and the inbox/outbox migrations."

      class_option :database, type: :string, aliases: %i[--db],
                              desc: "The database the migrations are for (multi-database apps)"

      # Invoked in-process, so --force/--skip/--pretend and `rails destroy` carry through.
      def create_initializer
        invoke "jetstream_bridge:initializer"
      end

      def create_migrations
        invoke "jetstream_bridge:migrations"
      end

      def show_next_steps
        return unless behavior == :invoke

        say ""
        say "JetstreamBridge installed. Next:"
        say "  1. Review config/initializers/jetstream_bridge.rb (APP_NAME, DESTINATION_APP, NATS_URLS)."
        say "  2. bin/rails db:migrate"
        say "  3. Optional health endpoint: bin/rails g jetstream_bridge:health_check"
      end
    end
  end
end
