# frozen_string_literal: true

module JetstreamBridge
  class Consumer
    # The settings one run! uses, read once (not per message); wrappers are the middleware
    # chain for this run (see Handling; none: the handler is called directly).
    Settings = Struct.new(:max_deliver, :backoff_ms, :unrecoverable_errors, :dlq_subject, :stream, :wrappers,
                          :batch_wrappers, :batch_limit) do
      def self.from(config, own_middleware = nil)
        wrappers = Handling.wrappers_for(config, own_middleware)
        new(config.max_deliver, config.backoff_ms, Array(config.unrecoverable_errors),
            (config.dlq_subject if config.use_dlq), config.stream_name, wrappers, Handling.batch_wrappers(wrappers),
            Handling.batch_limit(wrappers))
      end

      # The NAK delay (ms) before redelivery `deliveries` + 1: backoff's entry for this
      # delivery, the last one repeating; nil (at once) with no backoff.
      def delay_ms(deliveries)
        backoff_ms.empty? ? nil : backoff_ms[[deliveries - 1, backoff_ms.size - 1].min]
      end
    end
  end
end
