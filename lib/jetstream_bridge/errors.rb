# frozen_string_literal: true

module JetstreamBridge
  # Base of every error the bridge raises.
  class Error < StandardError
    # The event a failed Client#publish_event attempt sent (a Native::BuiltEvent: subject,
    # event_id, json, headers), which the retries send again; nil otherwise.
    attr_reader :unsent_event

    def initialize(message = nil, unsent_event: nil)
      super(message)
      @unsent_event = unsent_event
    end
  end

  # A setting is missing or unusable.
  class ConfigurationError < Error; end
  # A setting used as a subject token holds `.`, `*`, `>`, `/`, `\\`, whitespace or a
  # control character.
  class InvalidSubjectError < ConfigurationError; end
  # A required setting (app_name, destination_app) is not set.
  class MissingConfigurationError < ConfigurationError; end

  # No connection to NATS could be made, or it was lost mid-operation.
  class ConnectionError < Error; end
  # The server refused the credentials or a permission.
  class AuthorizationError < ConnectionError; end
  # A JetStream API request (stream/consumer info, create, update) was not answered in time.
  class RequestTimeoutError < ConnectionError; end

  # A publish failed.
  class PublishError < Error; end
  # The server did not acknowledge a publish in time.
  class PublishTimeoutError < PublishError; end
  # No stream captures the subject published to.
  class StreamNotFoundError < PublishError; end
  # The stream exists but has no leader (a cluster election outlasted the retries).
  class StreamUnavailableError < PublishError; end
  # The message is larger than the server's max_payload.
  class PayloadTooLargeError < PublishError; end

  # The JetStream API answered with an error; `code` is HTTP-like, `err_code` JetStream's.
  class JetStreamApiError < Error
    attr_reader :code, :err_code

    def initialize(message = nil, code: nil, err_code: nil, **options)
      super(message, **options)
      @code = code
      @err_code = err_code
    end
  end

  # The stream could not be provisioned or checked.
  class TopologyError < Error; end
  # A consumer operation (create, fetch, ack) failed.
  class ConsumerError < Error; end
  # A message could not be moved to the dead-letter queue; the original is kept.
  class DlqRoutingFailedError < ConsumerError; end
  # A delivered body is not a JSON event envelope (named in DLQ headers, never raised).
  class MalformedMessageError < ConsumerError; end
  # A message was delivered more than max_deliver times unsettled (named in DLQ headers,
  # never raised).
  class DeliveryLimitError < ConsumerError; end
end
