# frozen_string_literal: true

module JetstreamBridge
  class Web
    # The dead letters (DeadLetters): a paged list filtered by reason, one entry with its
    # payload and headers, and Replay / Discard for one entry or for every entry of the
    # filter, each behind a confirmation page.
    class DeadLettersPage
      PER_PAGE = 50
      # Entries a filtered page looks at, at most (one stream lookup each), so that a page
      # stays quick however few entries match; the next page goes on from there.
      SCAN_LIMIT = 1000
      REASONS = %w[max_deliver unrecoverable malformed].freeze
      ACTIONS = { "replay" => "Replay", "discard" => "Discard" }.freeze

      def initialize(web)
        @web = web
        @params = web.request.params
      end

      def index
        reason = reason_param
        after = @params["after"].to_s.match?(/\A\d+\z/) ? @params["after"].to_i : 0
        entries, next_after = page_from(after, reason)
        @web.page(:dead_letters, title: "Dead letters", entries: entries, reason: reason, after: after,
                                 next_after: next_after, reasons: REASONS, notice: notice)
      rescue StandardError => e
        @web.failed(e)
      end

      def show(seq)
        entry = DeadLetters.find(seq)
        return @web.refuse(404, "No dead letter with sequence #{seq}.") unless entry

        @web.page(:dead_letter, title: "Dead letter #{entry.seq}", entry: entry, event: entry.event)
      rescue StandardError => e
        @web.failed(e)
      end

      # The confirmation page of an action: what it will do, and the button that does it.
      def confirm(target, action)
        return @web.refuse(403, "This dashboard is read-only.") if @web.read_only?

        entry = nil
        if target != "all"
          entry = DeadLetters.find(target)
          return @web.refuse(404, "No dead letter with sequence #{target}.") unless entry
        end
        @web.page(:confirm, title: "#{ACTIONS.fetch(action)} #{entry ? "dead letter #{entry.seq}" : 'dead letters'}?",
                            question: question(action, entry), action_path: "/dead_letters/#{target}/#{action}",
                            action_params: { reason: (reason_param if target == "all") }, label: ACTIONS.fetch(action),
                            danger: action == "discard",
                            back: entry ? "/dead_letters/#{entry.seq}" : "/dead_letters")
      rescue StandardError => e
        @web.failed(e)
      end

      def act(target, action)
        reason = reason_param
        done =
          if target == "all"
            count = action == "replay" ? DeadLetters.replay_all(reason: reason) : DeadLetters.discard_all(reason: reason)
            { done: "#{action}_all", n: count, reason: reason }
          else
            action == "replay" ? DeadLetters.replay(target) : DeadLetters.discard(target)
            { done: action, seq: target }
          end
        @web.redirect("/dead_letters", done)
      rescue ArgumentError => e
        @web.refuse(404, Native.redact(e.message))
      rescue StandardError => e
        @web.failed(e)
      end

      private

      # Up to PER_PAGE entries after `after` (with `reason`), and the sequence the next page
      # starts after (nil on the last page).
      def page_from(after, reason)
        entries = []
        scanned = 0
        last = after
        DeadLetters.each(after: after) do |entry|
          return [entries, last] if entries.size >= PER_PAGE || scanned >= SCAN_LIMIT

          scanned += 1
          last = entry.seq
          entries << entry if reason.nil? || entry.reason == reason
        end
        [entries, nil]
      end

      def reason_param
        reason = @params["reason"].to_s
        REASONS.include?(reason) ? reason : nil
      end

      def question(action, entry)
        if entry
          return "Delete dead letter #{entry.seq} (#{entry.original_subject}) for good?" if action == "discard"

          "Publish dead letter #{entry.seq} again to #{entry.original_subject}, then delete it from the dead-letter queue?"
        else
          which = reason_param ? "every dead letter with reason #{reason_param}" : "every dead letter"
          return "Delete #{which} for good?" if action == "discard"

          "Publish #{which} again to its original subject, deleting each once it is stored? " \
            "An event that fails again is dead-lettered anew."
        end
      end

      # The sentence saying what the last action did (fixed words and numbers only).
      def notice
        n = @params["n"].to_i
        seq = @params["seq"].to_s[/\A\d+\z/]
        case @params["done"]
        when "replay" then "Replayed dead letter #{seq}."
        when "discard" then "Discarded dead letter #{seq}."
        when "replay_all" then "Replayed #{n} dead #{n == 1 ? 'letter' : 'letters'}#{" with reason #{reason_param}" if reason_param}."
        when "discard_all" then "Discarded #{n} dead #{n == 1 ? 'letter' : 'letters'}#{" with reason #{reason_param}" if reason_param}."
        end
      end
    end
  end
end
