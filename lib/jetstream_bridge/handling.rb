# frozen_string_literal: true

require_relative "message_context"
require_relative "middleware"

module JetstreamBridge
  # Runs the user's handler for one message inside the consumer's middleware chain (see
  # Middleware): the framework's entries first (the Railtie's executor wrap, so
  # ActiveRecord connections are returned after each message), then
  # config.consumer_middleware, then the consumer's own, then the inbox (innermost, so the
  # handler's database work shares its transaction) when config.use_inbox is set.
  module Handling
    @framework = []

    class << self
      # Adds an outermost entry for every consumer run started afterwards (the Railtie's
      # executor wrap): an object with call(event, context) { }.
      def add_wrapper(wrapper)
        @framework += [wrapper] unless @framework.include?(wrapper)
      end

      def remove_wrapper(wrapper)
        @framework -= [wrapper]
      end

      # The chain one consumer run uses (instances), outermost first.
      def wrappers_for(config, own = nil)
        chain = @framework + config.consumer_middleware.build
        chain += own.build if own
        chain << Inbox.new if config.use_inbox && chain.none?(Inbox)
        chain.freeze
      end

      def call(handler, context, chain, arguments: 3)
        run(chain, 0, handler, context, arguments)
      end

      # When an entry asks for it (the inbox: batches? is true), the consumer runs each
      # fetched batch inside the entries' around_batch { } and acks its messages after it
      # completes (the inbox commits a batch in one transaction). Otherwise: none.
      def batch_wrappers(chain)
        return [].freeze unless chain.any? { |w| w.respond_to?(:batches?) && w.batches? }

        chain.select { |w| w.respond_to?(:around_batch) }.freeze
      end

      # The most messages one around_batch may span (the smallest batch_limit asked for).
      def batch_limit(chain)
        chain.filter_map { |w| w.batch_limit if w.respond_to?(:batch_limit) }.min || 1_000_000
      end

      # contexts: the batch's messages (see Processor#batch_context).
      def around_batch(wrappers, contexts, index = 0, &block)
        return yield if index == wrappers.size

        wrappers[index].around_batch(contexts) { around_batch(wrappers, contexts, index + 1, &block) }
      end

      private

      def run(chain, index, handler, context, arguments)
        if index == chain.size
          return Consumer::HandlerSignature.invoke(handler, arguments, context.event, context.subject, context.deliveries, context)
        end

        chain[index].call(context.event, context) { run(chain, index + 1, handler, context, arguments) }
      end
    end
  end
end
