# frozen_string_literal: true

module JetstreamBridge
  class Consumer
    # What a handler's call can take. It is called with (event, subject, deliveries), with a
    # fourth argument, the MessageContext, when it requires four, or with the event alone (a
    # DeliveredEvent) when it takes exactly one. A handler that can take none of these is
    # refused when it is given: otherwise every delivery would raise ArgumentError and every
    # message would end in the dead-letter queue.
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
        return if accepts?(parameters, arguments(handler))

        raise ArgumentError, "#{given_to}: the handler's call(#{signature(parameters)}) cannot be called with " \
                             "(event), (event, subject, deliveries) or (event, subject, deliveries, context)"
      end

      # How many arguments the handler is called with: 4 (it requires the MessageContext),
      # 1 (it takes the event alone), else 3. A block takes any number: 3.
      def arguments(handler)
        return 3 if handler.is_a?(Proc) && !handler.lambda?
        return 4 if takes_context?(handler)

        parameters = callable(handler).parameters
        !accepts?(parameters, 3) && accepts?(parameters, 1) ? 1 : 3
      end

      # Calls the handler with what it takes (see arguments); the MessageContext is the
      # current one unless given.
      def invoke(handler, arguments, event, subject, deliveries, context = nil)
        case arguments
        when 3 then handler.call(event, subject, deliveries)
        when 4 then handler.call(event, subject, deliveries, context || MessageContext.current)
        else handler.call(event.is_a?(Hash) ? DeliveredEvent.new(event, subject, deliveries, context || MessageContext.current) : event)
        end
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
