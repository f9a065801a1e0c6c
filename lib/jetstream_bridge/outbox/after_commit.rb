# frozen_string_literal: true

module JetstreamBridge
  module Outbox
    # Registered on the open transaction (connection.add_transaction_record). The events
    # published in it are written just before it commits, in it, with multi-row INSERTs
    # (before_committed!), published once it has committed (committed!: Outbox.dispatch,
    # now or on the delivery thread, in commit order), and forgotten
    # when it, or the savepoint they were published in, rolls back (rolledback!).
    # ActiveRecord hands it to the parent transaction when a savepoint is released; the
    # AfterCommits committing together write and publish their events as one group, in the
    # order publish was called, before the transaction's after_commit callbacks run.
    class AfterCommit
      attr_reader :table
      attr_accessor :group

      def initialize(table)
        @table = table
        @entries = []
        @group = nil
      end

      def add(entries) = @entries.concat(entries)

      # Hands over (and forgets) the events.
      def take
        taken = @entries
        @entries = []
        taken
      end

      def unwritten = @entries.reject(&:status)

      def before_committed!(*)
        group = Outbox.committing_group(self)
        group.group_by(&:table).each do |t, members|
          Outbox.write(t, members.flat_map(&:unwritten).sort_by(&:seq))
        end
        group.each { |member| member.group = group }
      end

      def committed!(*, **)
        group = @group || [self]
        @group = nil
        group.group_by(&:table).each do |t, members|
          entries = members.flat_map(&:take).sort_by(&:seq)
          unwritten = entries.reject(&:status)
          unless unwritten.empty?
            # Only if ActiveRecord committed without calling before_committed!: write them
            # now (after the commit) rather than lose them.
            Instrumentation.emit("warn", "outbox_late_write",
                                 "outbox: #{unwritten.size} event(s) written after the commit (before_committed! was not called)")
            Outbox.write(t, unwritten)
          end
          Outbox.dispatch(t, entries)
        end
      end

      def rolledback!(*, **)
        @entries = []
        @group = nil
      end

      def trigger_transactional_callbacks? = true
    end
  end
end
