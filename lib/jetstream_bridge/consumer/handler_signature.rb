# frozen_string_literal: true

module JetstreamBridge
  class Consumer
    # What a handler's call can take. It is called with (event, subject, deliveries), or
    # with a fourth argument, the MessageContext, when it requires four. A handler that can
    # take neither is refused when it is given: otherwise every delivery would raise
    # ArgumentError and every message would end in the dead-letter queue.
    module HandlerSignature
      module_function

      # Raises ArgumentError, naming `given_to` (subscribe, Testing.handle...), unless
      # `handler` can be called as a handler.
      def check!(handler, given_to)
        unless handler.respond_to?(:call)
          raise ArgumentError, "#{given_to} needs a block or an object responding to #call(event, subject, deliveries)"
        end
        return if handler.is_a?(Proc) && !handler.lambda? # a block takes any number of arguments

        parameters = callable(handler).parameters
        return if accepts?(parameters, takes_context?(handler) ? 4 : 3)

        raise ArgumentError, "#{given_to}: the handler's call(#{signature(parameters)}) cannot be called with " \
                             "(event, subject, deliveries) or (event, subject, deliveries, context)"
      end

      # Whether the handler requires the fourth argument (the MessageContext).
      def takes_context?(handler)
        arity = callable(handler).arity
        arity >= 4 || arity <= -5
      end

      # The Proc or Method that runs: a Method given as the handler is itself (its own
      # #call would report any arity).
      def callable(handler)
        handler.is_a?(Proc) || handler.is_a?(Method) ? handler : handler.method(:call)
      end

      def accepts?(parameters, count)
        kinds = parameters.map(&:first)
        return false if kinds.include?(:keyreq)

        required = kinds.count(:req)
        required <= count && (kinds.include?(:rest) || required + kinds.count(:opt) >= count)
      end

      PARAMETER_FORMS = { req: "%s", opt: "%s = …", rest: "*%s", keyreq: "%s:", key: "%s: …", keyrest: "**%s", block: "&%s" }.freeze

      def signature(parameters)
        parameters.map { |kind, name| format(PARAMETER_FORMS.fetch(kind, "%s"), name) }.join(", ")
      end
    end
  end
end
