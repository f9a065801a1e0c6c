# frozen_string_literal: true

require "rails/railtie"

module JetstreamBridge
  # Rails integration, loaded when the gem is required after Rails (Bundler.require):
  # - config.logger defaults to Rails.logger;
  # - the gem's models (OutboxEvent, InboxEvent) are loaded with the app when it eager
  #   loads (production), and on first use otherwise;
  # - nothing connects to NATS while the app boots: the connection is made on first use;
  # - consumer handlers run inside the Rails executor, so ActiveRecord connections (and
  #   other per-unit-of-work state) are returned after each message;
  # - the jetstream_bridge:* rake tasks (lib/tasks/jetstream_bridge.rake).
  class Railtie < ::Rails::Railtie
    # Outermost middleware: one message = one unit of work for the Rails executor.
    class ExecutorWrapper
      def initialize(app)
        @app = app
      end

      def call(_event, _context, &block)
        wrap(&block)
      end

      # With the inbox, a whole batch is one unit of work (the executor is re-entrant, so
      # the per-message wrap inside it adds nothing).
      def around_batch(_contexts, &block)
        wrap(&block)
      end

      private

      # The handler's error leaves the executor as a value and is raised outside it: Rails
      # 7.1+'s executor reports an error escaping it to Rails.error as unhandled, and the
      # bridge's own report (handled: the message is retried) was then dropped as a duplicate.
      def wrap
        error = nil
        result = @app.executor.wrap do
          yield
        rescue StandardError => e
          error = e
        end
        raise error if error

        result
      end
    end

    config.eager_load_namespaces << JetstreamBridge

    # Before config/initializers, so an initializer setting config.logger wins.
    initializer "jetstream_bridge.logger", after: :initialize_logger do
      JetstreamBridge.use_rails_logger!
    end

    initializer "jetstream_bridge.executor" do |app|
      JetstreamBridge::Handling.add_wrapper(ExecutorWrapper.new(app))
    end

    rake_tasks do
      load File.expand_path("../tasks/jetstream_bridge.rake", __dir__)
    end
  end

  class << self
    # Loads what the app would otherwise load on first use (Rails eager loading).
    def eager_load!
      require_relative "models" if defined?(::ActiveRecord::Base)
    end

    # config.logger becomes Rails.logger unless the app already set a logger of its own.
    def use_rails_logger!
      return unless defined?(::Rails) && ::Rails.logger

      cfg = config
      logger = cfg.logger
      cfg.logger = ::Rails.logger if logger.nil? || (logger.respond_to?(:progname) && logger.progname == "jetstream_bridge")
    end
  end
end
