# frozen_string_literal: true

require "tmpdir"

desc "Build the .gem, install it into a temporary GEM_HOME, and use it from outside the repo"
task :gem_smoke do
  root = File.expand_path("..", __dir__)
  Dir.mktmpdir("jsb-gem-") do |tmp|
    sh "gem", "build", "jetstream_bridge.gemspec", "--output", File.join(tmp, "jetstream_bridge.gem"), chdir: root
    # Reuse the repo's cargo target dir so the install compiles incrementally.
    env = { "GEM_HOME" => File.join(tmp, "home"), "GEM_PATH" => File.join(tmp, "home"),
            "CARGO_TARGET_DIR" => File.join(root, "target") }
    sh env, "gem", "install", "--local", "--no-document", File.join(tmp, "jetstream_bridge.gem")
    script = <<~RUBY
      require "jetstream_bridge"
      abort "loaded from the repo" if $LOADED_FEATURES.grep(%r{#{root}/lib}).any?
      JetstreamBridge.configure(app_name: "smoke", destination_app: "other", env: "test")
      puts "jetstream_bridge \#{JetstreamBridge::VERSION} from \#{Gem.loaded_specs['jetstream_bridge'].full_gem_path}"
      puts JetstreamBridge.config.names.inspect
    RUBY
    sh env, "ruby", "-e", script, chdir: tmp
  end
end
