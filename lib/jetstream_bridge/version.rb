# frozen_string_literal: true

module JetstreamBridge
  VERSION = "3.0.0"
end
