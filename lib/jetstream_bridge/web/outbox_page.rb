# frozen_string_literal: true

module JetstreamBridge
  class Web
    # The outbox: rows by status, how old the oldest unsent one is, the failed and dead
    # rows with their last error, and Retry for dead rows (Outbox.retry_dead).
    class OutboxPage
      COLUMNS = %w[id event_id subject status attempts last_error created_at updated_at].freeze
      # Counted exactly; sent rows are the rest of the table (estimated on PostgreSQL).
      UNSENT = [Outbox::PENDING, Outbox::PUBLISHING, Outbox::FAILED, Outbox::DEAD].freeze

      def initialize(web)
        @web = web
        @params = web.request.params
      end

      def index
        return @web.page(:off, title: "Outbox", setting: "use_outbox") unless JetstreamBridge.config.use_outbox

        table = Outbox.table
        counts = Rows.counts(table, UNSENT)
        total, estimated = Rows.total(table)
        counts[Outbox::SENT] = [total - counts.values.sum, 0].max
        @web.page(:outbox, title: "Outbox", counts: counts, sent_estimated: estimated, health: Health.outbox_status,
                           rows: Rows.recent(table, [Outbox::FAILED, Outbox::DEAD], COLUMNS), notice: notice)
      rescue StandardError => e
        @web.failed(e)
      end

      def confirm(target)
        return @web.refuse(403, "This dashboard is read-only.") if @web.read_only?

        which = target == "all" ? "every dead outbox row" : "dead outbox row #{target}"
        @web.page(:confirm, title: "Retry #{which}?", question: "Make #{which} failed again, with no attempts, for the relay's next pass?",
                            action_path: "/outbox/#{target}/retry", action_params: {}, label: "Retry", danger: false,
                            back: "/outbox")
      end

      def retry(target)
        count = target == "all" ? Outbox.retry_dead : Outbox.retry_dead(ids: [Integer(target, 10)])
        @web.redirect("/outbox", done: "retry", n: count)
      rescue StandardError => e
        @web.failed(e)
      end

      private

      def notice
        return unless @params["done"] == "retry"

        n = @params["n"].to_i
        "#{n} dead #{n == 1 ? 'row' : 'rows'} made failed again: the relay sends #{n == 1 ? 'it' : 'them'} on its next pass."
      end
    end
  end
end
