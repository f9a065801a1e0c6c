# frozen_string_literal: true

module JetstreamBridge
  class Web
    # The inbox: rows by status and the recent failures with their last error.
    class InboxPage
      COLUMNS = %w[id event_id subject stream_seq deliveries last_error received_at updated_at].freeze

      def initialize(web)
        @web = web
      end

      def index
        return @web.page(:off, title: "Inbox", setting: "use_inbox") unless JetstreamBridge.config.use_inbox

        table = Inbox.new.table
        counts = table.has?("status") ? Rows.counts(table, [Inbox::FAILED]) : {}
        total, estimated = Rows.total(table)
        counts[Inbox::PROCESSED] = [total - counts.values.sum, 0].max
        rows = table.has?("status") ? Rows.recent(table, [Inbox::FAILED], COLUMNS) : []
        @web.page(:inbox, title: "Inbox", counts: counts, processed_estimated: estimated, rows: rows)
      rescue StandardError => e
        @web.refuse(502, "#{e.class}: #{Native.redact(e.message)}")
      end
    end
  end
end
