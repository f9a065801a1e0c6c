# frozen_string_literal: true

require "rbconfig"

ROOT = File.expand_path("..", __dir__)
# The Ruby minor version this rake runs on: compile installs into lib/jetstream_bridge/<it>/,
# the directory the loader tries first (lib/jetstream_bridge/native.rb), so builds for
# several Rubies (this machine's and bin/in-root's) sit side by side in one checkout.
RUBY_MINOR = RUBY_VERSION[/\A\d+\.\d+/]

desc "Build the Rust core through ext/jetstream_bridge/extconf.rb into lib/jetstream_bridge/#{RUBY_MINOR}/"
task :compile do
  build_dir = File.join(ROOT, "tmp", "ext", RUBY_MINOR)
  mkdir_p build_dir
  # bin/in-root sets its own (target/roots/NAME): one cargo build per Ruby.
  env = { "CARGO_TARGET_DIR" => ENV.fetch("CARGO_TARGET_DIR", File.join(ROOT, "target")) }
  Dir.chdir(build_dir) do
    sh env, RbConfig.ruby, File.join(ROOT, "ext/jetstream_bridge/extconf.rb")
    sh env, "make", "install", "sitearchdir=#{File.join(ROOT, 'lib')}", "target_prefix=/jetstream_bridge/#{RUBY_MINOR}"
  end
end

desc "Run the Rust unit tests (in the profile rake compile builds, so the dependencies are built once)"
task :cargo_test do
  sh "cargo", "test", "--profile", ENV.fetch("JETSTREAM_BRIDGE_CARGO_PROFILE", "release"), "--lib", chdir: ROOT
end
