# frozen_string_literal: true

module JetstreamBridge
  # What a handler is called with, plus delivery facts the inbox needs (msg_id is the
  # Nats-Msg-Id header).
  MessageContext = Struct.new(:event, :subject, :deliveries, :msg_id, :stream_seq, :stream, keyword_init: true)

  # Runs the user's handler for one message. Wrapped (by the Railtie and the inbox) so
  # that, for example, ActiveRecord connections are returned after each message.
  # A wrapper is called as wrapper.call(context) { run the rest }: one that does not yield
  # skips the handler (the message is acked); one that raises makes the consumer NAK it.
  module Handling
    @wrappers = []

    class << self
      # Adds a wrapper for every consumer run started afterwards (outermost first).
      def add_wrapper(wrapper)
        @wrappers += [wrapper] unless @wrappers.include?(wrapper)
      end

      def remove_wrapper(wrapper)
        @wrappers -= [wrapper]
      end

      # The wrappers one consumer run uses: the added ones, then the inbox (innermost, so
      # the handler's database work shares its transaction) when config.use_inbox is set.
      def wrappers_for(config)
        list = @wrappers.dup
        list << Inbox.new if config.use_inbox
        list.freeze
      end

      def call(handler, context, wrappers = @wrappers)
        run(wrappers, 0, handler, context)
      end

      # When a wrapper asks for it (the inbox: batches? is true), the consumer runs each
      # fetched batch inside the wrappers' around_batch { } and acks its messages after it
      # completes (the inbox commits a batch in one transaction). Otherwise: none.
      def batch_wrappers(wrappers)
        return [].freeze unless wrappers.any? { |w| w.respond_to?(:batches?) && w.batches? }

        wrappers.select { |w| w.respond_to?(:around_batch) }.freeze
      end

      # The most messages one around_batch may span (the smallest batch_limit asked for).
      def batch_limit(wrappers)
        wrappers.filter_map { |w| w.batch_limit if w.respond_to?(:batch_limit) }.min || 1_000_000
      end

      def around_batch(wrappers, index = 0, &block)
        return yield if index == wrappers.size

        wrappers[index].around_batch { around_batch(wrappers, index + 1, &block) }
      end

      private

      def run(wrappers, index, handler, context)
        return handler.call(context.event, context.subject, context.deliveries) if index == wrappers.size

        wrappers[index].call(context) { run(wrappers, index + 1, handler, context) }
      end
    end
  end
end
