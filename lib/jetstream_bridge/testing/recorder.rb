# frozen_string_literal: true

module JetstreamBridge
  module Testing
    # Turns what publish built into Published records, at the moment a real publish would
    # have sent it: at once, or with use_outbox inside an ActiveRecord transaction, once
    # it commits (never when it, or the savepoint the publish was in, rolls back).
    module Recorder
      module_function

      # built: Native::BuiltEvents (Event.build's); yields the records when they count as
      # published.
      def record(built, &arrive)
        events = built.map do |event|
          Published.new(subject: event.subject, headers: { "Nats-Msg-Id" => event.event_id }.merge(event.headers || {}).freeze,
                        envelope: JSON.parse(event.json).freeze)
        end
        model = outbox_model
        Outbox.refuse_in_trap! if model # as Outbox.record does
        if model && transaction_open?(model)
          # Joins the open transaction, or a savepoint when it is not joinable (a test's
          # transactional fixtures), as Outbox.record does: the commit of that savepoint
          # then counts as the commit.
          model.transaction { model.connection.add_transaction_record(AfterCommit.new(events, arrive)) }
        else
          arrive.call(events)
        end
        events.size
      end

      # The outbox model when use_outbox is on and ActiveRecord is loaded, else nil.
      def outbox_model
        return nil unless JetstreamBridge.config.use_outbox && defined?(::ActiveRecord::Base)

        Table.resolve_model(JetstreamBridge.config.outbox_model, "config.outbox_model")
      end

      # No database configured: no transaction either.
      def transaction_open?(model)
        model.connection.transaction_open?
      rescue ::ActiveRecord::ConnectionNotEstablished
        false
      end

      # A transaction record (ActiveRecord calls these like a model's callbacks).
      class AfterCommit
        def initialize(events, arrive)
          @events = events
          @arrive = arrive
        end

        def before_committed!(*) = nil

        def committed!(*, **)
          events = @events
          @events = []
          @arrive.call(events) unless events.empty?
        end

        def rolledback!(*, **)
          @events = []
        end

        def trigger_transactional_callbacks? = true
      end
    end
  end
end
