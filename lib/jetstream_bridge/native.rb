# frozen_string_literal: true

# Loads the Rust core. Loading only defines classes: nothing connects and no thread
# starts until first use.
#
# A platform gem (rake native:gem) carries one library per Ruby minor version, at
# jetstream_bridge/<major.minor>/jetstream_bridge.so; a source install builds
# jetstream_bridge/jetstream_bridge.so (ext/jetstream_bridge/extconf.rb).
#
# The core looks up, when it loads, the classes it raises (errors.rb) and the named values
# it builds and reads (native_types.rb): they are loaded first.
require_relative "errors"
require_relative "native_types"

version_library = File.join(__dir__, RUBY_VERSION[/\A\d+\.\d+/], "jetstream_bridge")
begin
  require version_library
rescue LoadError => e
  # Only "no such file" means a source build; a library that is there but fails to load must say why.
  raise unless e.path == version_library

  require "jetstream_bridge/jetstream_bridge"
end
