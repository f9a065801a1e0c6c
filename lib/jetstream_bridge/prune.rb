# frozen_string_literal: true

module JetstreamBridge
  # Deletes old outbox and inbox rows in batches: one short DELETE each (no long table
  # lock), oldest ids first. See Outbox.prune and Inbox.prune.
  module Prune
    # Rows per DELETE statement.
    BATCH = 10_000

    module_function

    # Deletes the rows of table `t` with `status` (nil: any) whose `column` is older than
    # `older_than` (a duration: "7d"); yields the running total after each batch. Returns
    # how many rows were deleted.
    def rows(t, status:, column:, older_than:, batch: BATCH)
      cutoff = Time.now - seconds(older_than)
      where = "#{t.q(column)} < #{t.quote(cutoff.utc)}"
      where = "#{t.q('status')} = #{t.quote(status)} AND #{where}" if status && t.has?("status")
      pk = t.q(t.primary_key)
      sql = "DELETE FROM #{t.quoted_table} WHERE #{pk} IN " \
            "(SELECT #{pk} FROM #{t.quoted_table} WHERE #{where} ORDER BY #{pk} LIMIT #{Integer(batch)})"
      total = 0
      t.with_connection do
        while (deleted = t.connection.exec_delete(sql, "JetstreamBridge prune")).positive?
          total += deleted
          yield total if block_given?
        end
      end
      total
    end

    # `older_than` in seconds; ConfigurationError naming it when it is not a duration.
    def seconds(older_than)
      Native.duration_ms(older_than, "older_than") / 1000.0
    end

    # The first of `columns` the table has: the time rows are pruned by.
    def time_column(t, columns)
      columns.find { |c| t.has?(c) } or
        raise ConfigurationError, "table #{t.name} has none of #{columns.join(', ')}: rows cannot be pruned by age"
    end
  end
end
