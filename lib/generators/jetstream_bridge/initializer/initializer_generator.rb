# frozen_string_literal: true

require "rails/generators"

module JetstreamBridge
  module Generators
    # bin/rails g jetstream_bridge:initializer — config/initializers/jetstream_bridge.rb.
    class InitializerGenerator < Rails::Generators::Base
      source_root File.expand_path("templates", __dir__)

      desc "Creates config/initializers/jetstream_bridge.rb with every setting and its default."

      def create_initializer_file
        # skip: an initializer the user already edited is left alone (no interactive
        # overwrite prompt); --force still replaces it.
        template "jetstream_bridge.rb", "config/initializers/jetstream_bridge.rb", skip: true
      end

      private

      # Default app_name: the Rails application's module name, underscored ("MyApp" -> "my_app").
      # It becomes a subject token, so it must not contain dots, spaces or wildcards.
      def default_app_name
        app_class = defined?(Rails.application) && Rails.application&.class
        name = app_class&.module_parent_name.to_s.underscore
        name.match?(/\A[a-z0-9_-]+\z/) ? name : "my_app"
      end
    end
  end
end
