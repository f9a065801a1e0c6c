# frozen_string_literal: true

require "erb"
require "fileutils"
require "securerandom"
require "tmpdir"
require "active_record"

# A real database for in-process ActiveRecord specs: SQLite in a temporary file, or a fresh
# PostgreSQL database on 127.0.0.1:5432 (trust auth), created on first use and dropped at
# exit. The gem's tables are made by running the generator's migration templates, so the
# specs use exactly the schema `bin/rails g jetstream_bridge:install` creates.
#
#   db = ActiveRecordDb.sqlite        # or ActiveRecordDb.postgres
#   db.activate!                      # ActiveRecord::Base now uses it (tables created once)
#   db.truncate!                      # empties the bridge's tables
class ActiveRecordDb
  TEMPLATES = File.expand_path("../../lib/generators/jetstream_bridge/migrations/templates", __dir__)
  PG_HOST = ENV.fetch("PGHOST_TEST", "127.0.0.1")
  PG_PORT = Integer(ENV.fetch("PGPORT_TEST", "5432"))

  attr_reader :kind, :config

  def self.sqlite
    @sqlite ||= new(:sqlite)
  end

  def self.postgres
    @postgres ||= new(:postgres)
  end

  def self.all = [sqlite, postgres]

  # Whether PostgreSQL answers (specs on it are skipped with a reason otherwise).
  def self.postgres_available?
    return @pg_ok unless @pg_ok.nil?

    require "pg"
    PG.connect(host: PG_HOST, port: PG_PORT, dbname: "postgres", connect_timeout: 3).close
    @pg_ok = true
  rescue LoadError, StandardError
    @pg_ok = false
  end

  def initialize(kind)
    @kind = kind
    @created = false
    @config =
      if kind == :sqlite
        @dir = Dir.mktmpdir("jb-ar-sqlite-")
        { adapter: "sqlite3", database: File.join(@dir, "test.sqlite3"), pool: 10, timeout: 10_000 }
      else
        @name = "jb_spec_#{Process.pid}_#{SecureRandom.hex(3)}"
        { adapter: "postgresql", host: PG_HOST, port: PG_PORT, database: @name, pool: 10 }
      end
    at_exit { destroy! }
  end

  def sqlite? = kind == :sqlite
  def postgres? = kind == :postgres

  def activate!
    create! unless @created
    current = ActiveRecord::Base.connected? && ActiveRecord::Base.connection_db_config.configuration_hash
    unless current && current[:database] == config[:database]
      ActiveRecord::Base.establish_connection(config)
      # The same model classes now talk to another adapter: forget cached statements and columns.
      ActiveRecord::Base.descendants.each do |model|
        model.reset_column_information
        model.initialize_find_by_cache
      end
    end
    unless @migrated
      migrate!
      @migrated = true
    end
    require "jetstream_bridge/models"
    JetstreamBridge::Table.reset!
    self
  end

  def connection = ActiveRecord::Base.connection

  def truncate!(*tables)
    tables = %w[jetstream_outbox_events jetstream_inbox_events] if tables.empty?
    tables.each do |t|
      if postgres?
        connection.execute("TRUNCATE #{connection.quote_table_name(t)} RESTART IDENTITY")
      else
        connection.execute("DELETE FROM #{connection.quote_table_name(t)}")
      end
    end
  end

  # Runs Ruby code (a String, ActiveRecord migration DSL) as a migration's `change`.
  def migrate_code(code)
    klass = Class.new(ActiveRecord::Migration[6.1])
    klass.class_eval("def change\n#{code}\nend", __FILE__, __LINE__)
    ActiveRecord::Migration.suppress_messages { klass.migrate(:up) }
  end

  private

  def create!
    if postgres?
      require "pg"
      PG.connect(host: PG_HOST, port: PG_PORT, dbname: "postgres").tap { |c| c.exec("CREATE DATABASE #{@name}") }.close
    end
    @created = true
  end

  def migrate!
    %w[create_jetstream_outbox_events create_jetstream_inbox_events].each do |name|
      source = File.read(File.join(TEMPLATES, "#{name}.rb.tt"))
      class_name = name.split("_").map(&:capitalize).join
      migration_class_name = class_name
      migration_version = "[#{ActiveRecord::VERSION::MAJOR}.#{ActiveRecord::VERSION::MINOR}]"
      code = ERB.new(source).result(binding)
      mod = Module.new
      mod.module_eval(code, "#{name}.rb")
      ActiveRecord::Migration.suppress_messages { mod.const_get(class_name).migrate(:up) }
    end
  end

  def destroy!
    if postgres? && @created
      ActiveRecord::Base.connection_handler.clear_all_connections! if defined?(ActiveRecord::Base)
      begin
        ActiveRecord::Base.remove_connection if ActiveRecord::Base.connected? &&
                                                ActiveRecord::Base.connection_db_config.configuration_hash[:database] == @name
      rescue StandardError
        nil
      end
      PG.connect(host: PG_HOST, port: PG_PORT, dbname: "postgres").tap do |c|
        c.exec("DROP DATABASE IF EXISTS #{@name} WITH (FORCE)")
      end.close
    elsif @dir
      FileUtils.rm_rf(@dir)
    end
  rescue StandardError => e
    warn "ActiveRecordDb cleanup (#{kind}): #{e.class}: #{e.message}"
  end
end
