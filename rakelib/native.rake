# frozen_string_literal: true

require "fileutils"
require "rbconfig"
require "rubygems/package"
require "tmpdir"

# A platform gem: the compiled library for this platform and Ruby minor version, no Rust
# sources, nothing to build at install time (the layout rake-compiler's native gems use).
module NativeGem
  ROOT = File.expand_path("..", __dir__)
  # Ruby minor version the library is built for; also the directory the loader looks in.
  RUBY_MINOR = RUBY_VERSION[/\A\d+\.\d+/]
  # Where the library sits inside the gem (lib/jetstream_bridge/native.rb loads it from there).
  LIBRARY = "lib/jetstream_bridge/#{RUBY_MINOR}/jetstream_bridge.#{RbConfig::CONFIG['DLEXT']}".freeze
  # What `rake compile` builds: a release build of the crate for this Ruby.
  COMPILED = File.join(ROOT, "lib/jetstream_bridge/jetstream_bridge.#{RbConfig::CONFIG['DLEXT']}")

  module_function

  # The source gemspec, turned into the platform one (once: Gem::Specification.load caches and we modify it).
  def spec
    @spec ||= platform_spec(Dir.chdir(ROOT) { Gem::Specification.load("jetstream_bridge.gemspec") })
  end

  def platform_spec(spec)
    spec.platform = Gem::Platform.local
    spec.extensions = []
    # The source gem's files (directories left out) without the Rust sources and extconf.
    spec.files = spec.files.select { |f| File.file?(File.join(ROOT, f)) }
                           .reject { |f| f.start_with?("src/", "ext/", "Cargo.") } + [LIBRARY]
    # The gem carries one library, for this Ruby minor version only.
    spec.required_ruby_version = [">= #{RUBY_MINOR}", "< #{Gem::Version.new("#{RUBY_MINOR}.0").bump}"]
    spec
  end

  def gem_file
    File.join(ROOT, "pkg", "#{spec.full_name}.gem")
  end

  # Copies the gem's files into a staging directory and packs them there, so the
  # versioned library never sits in the checkout's lib/ (where it would shadow new builds).
  def build
    stage = File.join(ROOT, "tmp", "native", spec.full_name)
    FileUtils.rm_rf(stage)
    (spec.files - [LIBRARY]).each do |file|
      FileUtils.mkdir_p(File.dirname(File.join(stage, file)))
      FileUtils.cp(File.join(ROOT, file), File.join(stage, file))
    end
    FileUtils.mkdir_p(File.dirname(File.join(stage, LIBRARY)))
    FileUtils.cp(COMPILED, File.join(stage, LIBRARY))
    FileUtils.mkdir_p(File.dirname(gem_file))
    Dir.chdir(stage) { Gem::Package.build(spec, false, false, gem_file) }
  end
end

namespace :native do
  # Depends on compile: a no-op cargo run when lib/ already holds an up-to-date build.
  desc "Build pkg/jetstream_bridge-<version>-<platform>.gem with the compiled library for this Ruby"
  task gem: :compile do
    NativeGem.build
    puts "built #{NativeGem.gem_file}"
  end

  desc "Install the platform gem without cargo on the PATH and publish and consume through it"
  task gem_smoke: :gem do
    require_relative "../spec/support/nats_server"
    Dir.mktmpdir("jsb-native-gem-") do |tmp|
      home = File.join(tmp, "home")
      # Every PATH directory holding cargo or rustc is dropped: the install must not need them.
      path = ENV.fetch("PATH").split(File::PATH_SEPARATOR).reject do |dir|
        %w[cargo rustc].any? { |tool| File.exist?(File.join(dir, tool)) }
      end.join(File::PATH_SEPARATOR)
      # CARGO unset too: extconf.rb would run the cargo it names.
      env = { "GEM_HOME" => home, "GEM_PATH" => home, "PATH" => path, "CARGO" => nil }
      raise "cargo is still on the smoke PATH: #{path}" if system(env, "sh", "-c", "command -v cargo")

      output = IO.popen(env, ["gem", "install", "--local", "--no-document", NativeGem.gem_file, { err: %i[child out] }], &:read)
      puts output
      raise "gem install failed" unless $?.success?
      raise "gem install built an extension" if output.include?("Building native extensions")

      installed = File.join(home, "gems", NativeGem.spec.full_name)
      raise "installed gem lacks #{NativeGem::LIBRARY}" unless File.file?(File.join(installed, NativeGem::LIBRARY))
      raise "installed gem holds a source build" unless Dir[File.join(installed, "lib/jetstream_bridge/*.so")].empty?
      built = Dir[File.join(home, "extensions", "**", "*")].select { |f| File.file?(f) }
      raise "gem install built an extension: #{built}" unless built.empty?

      script = File.join(tmp, "round_trip.rb")
      File.write(script, <<~'RUBY')
        # Run from outside the checkout with the temporary GEM_HOME: the installed platform gem only.
        require "jetstream_bridge"
        require "timeout"

        library = File.join(Gem.loaded_specs.fetch("jetstream_bridge").full_gem_path, ARGV.fetch(1))
        unless $LOADED_FEATURES.include?(library)
          abort "native library not loaded from #{library}: #{$LOADED_FEATURES.grep(/jetstream_bridge\.so/)}"
        end

        JetstreamBridge.configure do |c|
          c.nats_urls = ARGV.fetch(0)
          c.env = "test"
          c.app_name = "smoke"
          c.destination_app = "smoke" # same app: the consumer reads the subject it publishes to
        end
        payload = { "id" => 1, "name" => "Zoë" }
        JetstreamBridge.publish(event_type: "user.created", payload: payload) || abort("publish returned false")

        received = Queue.new
        consumer = JetstreamBridge.subscribe { |event, subject, deliveries| received << [event, subject, deliveries] }
        runner = Thread.new { consumer.run! }
        event, subject, deliveries = Timeout.timeout(20) { received.pop }
        consumer.stop!
        runner.join(10) || abort("run! did not return after stop!")

        abort "wrong subject #{subject}" unless subject == "test.smoke.sync.smoke"
        abort "wrong event #{event.inspect}" unless event["event_type"] == "user.created" && event["resource_type"] == "user"
        abort "wrong payload #{event['payload'].inspect}" unless event["payload"] == payload
        abort "delivered #{deliveries} times" unless deliveries == 1
        puts "round trip through #{library}: #{event['payload']}"
      RUBY
      # The specs' server helper: a free loopback port, -js with a temporary store, removed after.
      NatsServer.with_server do |server|
        sh env, "ruby", script, server.url, NativeGem::LIBRARY, chdir: tmp
      end
    end
  end
end
