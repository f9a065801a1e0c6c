# frozen_string_literal: true

require "rbconfig"

ROOT = File.expand_path("..", __dir__)

desc "Build the Rust core through ext/jetstream_bridge/extconf.rb into lib/"
task :compile do
  build_dir = File.join(ROOT, "tmp", "ext")
  mkdir_p build_dir
  env = { "CARGO_TARGET_DIR" => File.join(ROOT, "target") }
  Dir.chdir(build_dir) do
    sh env, RbConfig.ruby, File.join(ROOT, "ext/jetstream_bridge/extconf.rb")
    sh env, "make", "install", "sitearchdir=#{File.join(ROOT, 'lib')}"
  end
end

desc "Run the Rust unit tests (in the profile rake compile builds, so the dependencies are built once)"
task :cargo_test do
  sh "cargo", "test", "--profile", ENV.fetch("JETSTREAM_BRIDGE_CARGO_PROFILE", "release"), "--lib", chdir: ROOT
end
