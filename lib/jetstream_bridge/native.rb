# frozen_string_literal: true

# Loads the Rust core (built by ext/jetstream_bridge/extconf.rb into
# jetstream_bridge/jetstream_bridge.so). Loading only defines classes: nothing connects
# and no thread starts until first use.
require "jetstream_bridge/jetstream_bridge"
