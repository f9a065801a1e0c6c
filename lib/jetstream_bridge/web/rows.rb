# frozen_string_literal: true

module JetstreamBridge
  class Web
    # Reading the outbox and inbox tables (a Table: the configured model, its columns
    # detected) for their pages, with queries the generated indexes serve.
    module Rows
      RECENT = 50

      module_function

      # { status => count } of these statuses: one GROUP BY, answered from the status index
      # alone on PostgreSQL (an index-only scan of those statuses' entries).
      def counts(table, statuses)
        table.with_connection do
          table.model.where(status: statuses).group(table.model.arel_table[:status]).count.transform_keys(&:to_s)
        end
      end

      # How many rows the table has, estimated on PostgreSQL (pg_class.reltuples, as of the
      # last VACUUM or ANALYZE: counting a million rows takes ~100 ms), counted elsewhere.
      # [count, estimated?]
      def total(table)
        table.with_connection do
          if table.postgres?
            estimate = table.connection.select_value("SELECT reltuples::bigint FROM pg_class WHERE oid = #{table.quote(table.name)}::regclass")
            return [estimate.to_i, true] if estimate.to_i.positive?
          end
          [table.model.count, false]
        end
      end

      # The newest RECENT rows with these statuses, newest first, as hashes of those of
      # `columns` the table has.
      def recent(table, statuses, columns)
        present = columns.select { |c| table.has?(c) }
        table.with_connection do
          table.model.where(status: statuses).order(table.primary_key => :desc).limit(RECENT)
               .pluck(*present).map { |values| present.zip(Array(values)).to_h }
        end
      end
    end
  end
end
