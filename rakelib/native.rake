# frozen_string_literal: true

require "fileutils"
require "rbconfig"
require "rubygems/package"
require "tmpdir"

# A platform gem: the compiled libraries for this platform, one per Ruby minor version
# built here (this machine's Ruby and each Debian root's in GEM_ROOTS), no Rust sources,
# nothing to build at install time (the layout rake-compiler's native gems use).
module NativeGem
  ROOT = File.expand_path("..", __dir__)
  DLEXT = RbConfig::CONFIG["DLEXT"]
  # The Debian roots whose Ruby gets a library in the gem (bin/setup builds them; one per
  # Ruby minor version: sid's Ruby is trixie's 3.3).
  GEM_ROOTS = %w[trixie].freeze

  module_function

  # Where a Ruby minor version's library sits, in the checkout (rake compile puts it there)
  # and in the gem (lib/jetstream_bridge/native.rb loads it from there).
  def library(minor) = "lib/jetstream_bridge/#{minor}/jetstream_bridge.#{DLEXT}"

  # The Ruby minor versions packed: this Ruby's, then each root's (asked there).
  def minors
    @minors ||= [RUBY_MINOR] + GEM_ROOTS.map do |name|
      IO.popen([File.join(ROOT, "bin/in-root"), name, "ruby", "-e", "print RUBY_VERSION[/\\A\\d+\\.\\d+/]"], &:read)
        .tap { raise "bin/in-root #{name} failed" unless $?.success? }
    end.uniq
  end

  # The source gemspec, turned into the platform one (once: Gem::Specification.load caches and we modify it).
  def spec
    @spec ||= platform_spec(Dir.chdir(ROOT) { Gem::Specification.load("jetstream_bridge.gemspec") })
  end

  def platform_spec(spec)
    spec.platform = Gem::Platform.local
    spec.extensions = []
    # The source gem's files (directories left out) without the Rust sources and extconf.
    spec.files = spec.files.select { |f| File.file?(File.join(ROOT, f)) }
                           .reject { |f| f.start_with?("src/", "ext/", "Cargo.") || f.end_with?(".#{DLEXT}") } +
                 minors.map { |minor| library(minor) }
    # From the oldest Ruby packed to below the next minor of the newest; a Ruby in between
    # without a library of its own is told so when it loads the gem (native.rb).
    versions = minors.map { |minor| Gem::Version.new(minor) }.sort
    spec.required_ruby_version = [">= #{versions.first}", "< #{Gem::Version.new("#{versions.last}.0").bump}"]
    spec
  end

  def gem_file
    File.join(ROOT, "pkg", "#{spec.full_name}.gem")
  end

  # Copies the gem's files into a staging directory and packs them there.
  def build
    stage = File.join(ROOT, "tmp", "native", spec.full_name)
    FileUtils.rm_rf(stage)
    spec.files.each do |file|
      FileUtils.mkdir_p(File.dirname(File.join(stage, file)))
      FileUtils.cp(File.join(ROOT, file), File.join(stage, file))
    end
    FileUtils.mkdir_p(File.dirname(gem_file))
    Dir.chdir(stage) { Gem::Package.build(spec, false, false, gem_file) }
  end

  # Installs `gem` into a temporary GEM_HOME with no cargo on the PATH, checks nothing was
  # built, and publishes and consumes an event through it on this Ruby.
  def smoke(gem)
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

      output = IO.popen(env, ["gem", "install", "--local", "--no-document", gem, { err: %i[child out] }], &:read)
      puts output
      raise "gem install failed" unless $?.success?
      raise "gem install built an extension" if output.include?("Building native extensions")

      installed = Dir[File.join(home, "gems", "jetstream_bridge-*")].first or raise "nothing installed in #{home}"
      raise "installed gem lacks #{library(RUBY_MINOR)}" unless File.file?(File.join(installed, library(RUBY_MINOR)))
      raise "installed gem holds a source build" unless Dir[File.join(installed, "lib/jetstream_bridge/*.so")].empty?
      built = Dir[File.join(home, "extensions", "**", "*")].select { |f| File.file?(f) }
      raise "gem install built an extension: #{built}" unless built.empty?

      script = File.join(tmp, "round_trip.rb")
      File.write(script, ROUND_TRIP)
      # The specs' server helper: a free loopback port, -js with a temporary store, removed after.
      NatsServer.with_server do |server|
        Rake.sh env, "ruby", script, server.url, library(RUBY_MINOR), chdir: tmp
      end
    end
  end

  ROUND_TRIP = <<~'RUBY'
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
    puts "Ruby #{RUBY_VERSION}: round trip through #{library}: #{event['payload']}"
  RUBY
end

namespace :native do
  # Compiles first, here and in each root: a no-op cargo run when the library is up to date.
  desc "Build pkg/jetstream_bridge-<version>-<platform>.gem with a compiled library per Ruby (this one and #{NativeGem::GEM_ROOTS.join(', ')}'s)"
  task gem: :compile do
    NativeGem::GEM_ROOTS.each { |name| sh File.join(NativeGem::ROOT, "bin/in-root"), name, "rake", "compile" }
    NativeGem.build
    puts "built #{NativeGem.gem_file} (Ruby #{NativeGem.minors.join(', ')})"
  end

  desc "Install the platform gem without cargo on the PATH and publish and consume through it, on each Ruby packed"
  task gem_smoke: :gem do
    NativeGem.smoke(NativeGem.gem_file)
    NativeGem::GEM_ROOTS.each do |name|
      sh File.join(NativeGem::ROOT, "bin/in-root"), name, "rake", "native:install_smoke", "GEM=#{NativeGem.gem_file}"
    end
  end

  # native:gem_smoke's part inside a root: that Ruby installs the gem already built.
  task :install_smoke do
    NativeGem.smoke(ENV.fetch("GEM"))
  end
end
