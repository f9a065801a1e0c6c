# frozen_string_literal: true

module JetstreamBridge
  class Web
    # Reading the outbox and inbox tables (a Table: the configured model, its columns
    # detected) for their pages, with queries the generated indexes serve.
    module Rows
      RECENT = 50

      module_function

      # { status => count }: one GROUP BY over the status index.
      def counts(table)
        with_connection(table) do
          table.model.group(table.model.arel_table[:status]).count.transform_keys(&:to_s)
        end
      end

      # The newest RECENT rows with these statuses, newest first, as hashes of those of
      # `columns` the table has.
      def recent(table, statuses, columns)
        present = columns.select { |c| table.has?(c) }
        with_connection(table) do
          table.model.where(status: statuses).order(table.primary_key => :desc).limit(RECENT)
               .pluck(*present).map { |values| present.zip(Array(values)).to_h }
        end
      end

      def with_connection(table, &block) = table.model.connection_pool.with_connection(&block)
    end
  end
end
