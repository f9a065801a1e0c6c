# frozen_string_literal: true

require_relative "sqlite_writes"

module JetstreamBridge
  # The outbox or inbox table behind an ActiveRecord model, written with hand-built SQL so
  # that many rows cost one statement. Columns are detected at runtime: only the columns the
  # table has are written, so a custom table with fewer optional columns still works.
  # Used by Outbox, OutboxRelay and Inbox; nothing here runs unless ActiveRecord is in use.
  class Table
    class << self
      # The Table for an ActiveRecord model class (cached per class, per process: ProcessState#tables).
      def for(model)
        ProcessState.current.tables.fetch(model) { new(model) }
      end

      # Forgets detected columns (after a migration in the same process).
      def reset!
        ProcessState.current.tables.clear
      end

      # The model class a setting names ("JetstreamBridge::OutboxEvent", a Class, ...). The
      # gem's own models are loaded on first use, so ActiveRecord stays optional.
      def resolve_model(setting, what)
        return setting if setting.is_a?(Class)

        name = setting.to_s
        load_own_models if name.start_with?("JetstreamBridge::")
        model = Object.const_get(name)
        unless model.is_a?(Class) && defined?(::ActiveRecord::Base) && model < ::ActiveRecord::Base
          raise ConfigurationError, "#{what} #{name} is not an ActiveRecord model"
        end

        model
      rescue NameError => e
        raise ConfigurationError, "#{what} #{name.inspect} is not defined (#{e.message})"
      rescue LoadError => e
        raise ConfigurationError, "#{what} needs ActiveRecord (#{e.message})"
      end

      private

      # require_relative once: each call checks $LOADED_FEATURES, and every outbox publish
      # and inbox batch resolves its model.
      def load_own_models
        return if @own_models_loaded

        require_relative "models"
        @own_models_loaded = true
      end
    end

    attr_reader :model, :name, :columns, :primary_key

    def initialize(model)
      @model = model
      @name = model.table_name
      @columns = model.column_names.to_h { |c| [c, true] }.freeze
      @column_info = model.columns_hash
      @primary_key = model.primary_key
      # ActiveRecord 7.2+, whose with_connection takes prevent_permanent_checkout.
      @prevent_permanent_checkout = ::ActiveRecord.version >= Gem::Version.new("7.2")
      conn = model.connection
      @adapter = conn.adapter_name.downcase
      @quoted_table = conn.quote_table_name(@name)
      @quoted = {}
      @columns.each_key { |c| @quoted[c] = conn.quote_column_name(c) }
    end

    def connection
      model.connection
    end

    # Yields with a connection of the model's pool, given back to the pool after the block
    # unless this thread held one already (the gem's own threads: delivery, marker, relay).
    # Why prevent_permanent_checkout: on ActiveRecord 7.2+, model.connection inside a plain
    # with_connection leases the connection to the thread for its life.
    def with_connection(&block)
      pool = model.connection_pool
      return pool.with_connection(&block) unless @prevent_permanent_checkout

      pool.with_connection(prevent_permanent_checkout: true, &block)
    end

    def has?(column)
      @columns.key?(column)
    end

    # The column's declared length (a string(255) column: 255), nil when unbounded.
    def limit_of(column)
      @column_info[column]&.limit
    end

    def jsonb?(column)
      @column_info[column]&.sql_type == "jsonb"
    end

    # PostgreSQL: a statement failed in the current transaction, which is now aborted; its
    # COMMIT would answer ROLLBACK, which ActiveRecord does not report.
    def transaction_aborted?
      return false unless postgres?

      conn = connection
      return aborted_on_6_1?(conn) unless conn.respond_to?(:any_raw_connection, true)

      # 7.1+: the driver's connection without raw_connection, which marks it dirty: that
      # turns ActiveRecord's reconnect off for as long as the thread keeps the connection (a
      # consumer without the Rails executor never recovered from a dropped connection).
      conn.send(:any_raw_connection).transaction_status == ::PG::PQTRANS_INERROR
    end

    def aborted_on_6_1?(conn)
      manager = conn.transaction_manager
      lazy = manager.lazy_transactions_enabled?
      status = conn.raw_connection.transaction_status
      # raw_connection turns ActiveRecord's lazy transactions off until the connection is
      # checked in (a consumer thread keeps it): every later savepoint would cost a round
      # trip even for a handler that never queries. Only the status was read: turn them
      # back on if they were.
      manager.enable_lazy_transactions! if lazy
      status == ::PG::PQTRANS_INERROR
    end

    def postgres?
      @adapter.include?("postg")
    end

    def sqlite?
      @adapter.include?("sqlite")
    end

    # The gem's write transaction: on SQLite one at a time in this process (SqliteWrites).
    def exclusive(&block)
      sqlite? ? SqliteWrites.exclusive(self, &block) : yield
    end

    def mysql?
      @adapter.include?("mysql") || @adapter.include?("trilogy")
    end

    # RETURNING on INSERT/UPDATE: PostgreSQL, and SQLite from 3.35.
    def returning?
      return true if postgres?
      return false unless @adapter.include?("sqlite")

      version = defined?(::SQLite3::SQLITE_VERSION) ? ::SQLite3::SQLITE_VERSION : "0"
      Gem::Version.new(version) >= Gem::Version.new("3.35.0")
    end

    def quoted_table = @quoted_table
    def q(column) = @quoted.fetch(column)
    def quote(value) = connection.quote(value)

    # Keeps only the columns the table has: { "column" => value }.
    def present(values)
      values.select { |column, _| has?(column) }
    end

    # "INSERT INTO t (a, b) VALUES (...), (...)" for rows of { column => Ruby value }:
    # `columns` of them (the table's: see #present), by default all of the first row's.
    def insert_sql(rows, columns = rows.first.keys)
      # A non-String value every row shares (the same Time, count) is quoted once: quoting a
      # Time costs more than the rest of a row.
      # model.connection is a pool lookup (~2 us): once per statement, not once per value.
      conn = connection
      quoted = {}.compare_by_identity
      # Appended to one buffer: no string per row or per value to copy again (the payloads
      # make a statement ~1 KB per row, and every copy is garbage to collect).
      sql = +"INSERT INTO #{quoted_table} (#{columns.map { |c| q(c) }.join(', ')}) VALUES "
      rows.each_with_index do |row, r|
        sql << (r.zero? ? "(" : ", (")
        columns.each_with_index do |c, i|
          sql << ", " unless i.zero?
          value = row[c]
          # A plain String as connection.quote makes it ('...' around quote_string), without
          # its dispatch on the value's class: most of a row is such strings (the payload).
          value.instance_of?(String) ? (sql << "'" << conn.quote_string(value) << "'") : (sql << (quoted[value] ||= conn.quote(value)))
        end
        sql << ")"
      end
      sql
    end

    # "col = value, ..." for an UPDATE, with only the columns the table has. Values given as
    # Arel.sql-like raw SQL are passed through (RawSQL).
    def assignments(values)
      conn = connection
      present(values).map { |c, v| "#{q(c)} = #{v.is_a?(RawSQL) ? v : conn.quote(v)}" }.join(", ")
    end

    # Raw SQL in #assignments (e.g. "attempts + 1").
    class RawSQL < String; end

    def raw(sql) = RawSQL.new(sql)

    # "column + 1" for #assignments (nil, so left out, when the table has no such column).
    def increment(column)
      has?(column) ? raw("COALESCE(#{q(column)}, 0) + 1") : nil
    end

    # "pk IN (1, 2, 3)".
    def ids_in(ids)
      conn = connection
      "#{q(primary_key)} IN (#{ids.map { |id| conn.quote(id) }.join(', ')})"
    end
  end
end
