# frozen_string_literal: true

# Loads the Rust core. Loading only defines classes: nothing connects and no thread
# starts until first use.
#
# A platform gem (rake native:gem) carries one library per Ruby minor version, at
# jetstream_bridge/<major.minor>/jetstream_bridge.so, where `rake compile` also puts its
# build; a source install builds jetstream_bridge/jetstream_bridge.so (extconf.rb).
#
# The core looks up, when it loads, the classes it raises (errors.rb) and the named values
# it builds and reads (native_types.rb): they are loaded first.
require_relative "errors"
require_relative "native_types"

ruby_minor = RUBY_VERSION[/\A\d+\.\d+/]
version_library = File.join(__dir__, ruby_minor, "jetstream_bridge")
begin
  require version_library
rescue LoadError => e
  # Only "no such file" means a source build; a library that is there but fails to load must say why.
  raise unless e.path == version_library

  begin
    require "jetstream_bridge/jetstream_bridge"
  rescue LoadError => e
    raise unless e.path == "jetstream_bridge/jetstream_bridge"

    # A platform gem spans its Rubies' range (3.1 to 3.3): one in between may have no library.
    built = Dir[File.join(__dir__, "*", "jetstream_bridge.*")].map { |f| File.basename(File.dirname(f)) }
    raise LoadError, "jetstream_bridge has no native library for Ruby #{ruby_minor} (built for: " \
                     "#{built.empty? ? 'none' : built.join(', ')}); install the source gem, which compiles one"
  end
end
