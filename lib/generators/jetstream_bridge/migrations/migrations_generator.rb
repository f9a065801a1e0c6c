# frozen_string_literal: true

require "rails/generators"
require "rails/generators/active_record/migration"
require "active_record"

module JetstreamBridge
  module Generators
    # bin/rails g jetstream_bridge:migrations — the outbox and inbox tables.
    class MigrationsGenerator < Rails::Generators::Base
      # next_migration_number = max(now, highest version in db/migrate + 1), and each migration
      # is written before the next number is taken: two migrations generated in the same second
      # get distinct versions.
      include ActiveRecord::Generators::Migration

      source_root File.expand_path("templates", __dir__)

      desc "Creates the jetstream_outbox_events and jetstream_inbox_events migrations."

      class_option :database, type: :string, aliases: %i[--db],
                              desc: "The database the migrations are for (multi-database apps)"

      MIGRATIONS = %w[create_jetstream_outbox_events create_jetstream_inbox_events].freeze

      def create_migration_files
        MIGRATIONS.each { |name| create_jetstream_migration(name) }
      end

      private

      def create_jetstream_migration(name)
        dir = db_migrate_path
        existing = self.class.migration_exists?(File.expand_path(dir, destination_root), name)
        if existing && behavior == :invoke && !options[:force]
          say_status :skip, "#{relative_to_original_destination_root(existing)} already exists", :yellow
          return
        end

        migration_template "#{name}.rb", File.join(dir, "#{name}.rb")
      end

      # "[6.1]": the Active Record the app runs, so the migration gets its current defaults.
      def migration_version
        "[#{ActiveRecord::VERSION::MAJOR}.#{ActiveRecord::VERSION::MINOR}]"
      end
    end
  end
end
