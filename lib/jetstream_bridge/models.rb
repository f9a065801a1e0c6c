# frozen_string_literal: true

require "active_record"

module JetstreamBridge
  # The outbox table made by `bin/rails g jetstream_bridge:install` (config.outbox_model).
  # Rows go pending -> publishing -> sent, or failed (attempts, last_error) until the
  # relay sends them, or dead once no retry is left; see JetstreamBridge::Outbox.
  class OutboxEvent < ::ActiveRecord::Base
    self.table_name = "jetstream_outbox_events"

    STATUSES = %w[pending publishing sent failed dead].freeze

    scope :pending, -> { where(status: "pending") }
    scope :publishing, -> { where(status: "publishing") }
    scope :sent, -> { where(status: "sent") }
    scope :failed, -> { where(status: "failed") }
    # Rows no longer retried (an error no retry fixes, or outbox_max_attempts used up).
    scope :dead, -> { where(status: "dead") }
    # Rows the relay still has to send.
    scope :unsent, -> { where.not(status: %w[sent dead]) }
  end

  # The inbox table made by `bin/rails g jetstream_bridge:install` (config.inbox_model).
  # A row is committed as processed together with the handler's own database work; a
  # failed attempt leaves it failed with last_error. See JetstreamBridge::Inbox.
  class InboxEvent < ::ActiveRecord::Base
    self.table_name = "jetstream_inbox_events"

    STATUSES = %w[processed failed].freeze

    scope :processed, -> { where(status: "processed") }
    scope :failed, -> { where(status: "failed") }
  end
end
