# frozen_string_literal: true

require_relative "lib/jetstream_bridge/version"

Gem::Specification.new do |spec|
  spec.name = "jetstream_bridge"
  spec.version = JetstreamBridge::VERSION
  spec.authors = ["jetstream_bridge developers"]
  spec.summary = "Production-safe event bridge over NATS JetStream for Rails, with a Rust core"
  spec.description = "Publish, consume, transactional outbox, idempotent inbox, dead-letter queue, " \
                     "overlap-safe stream provisioning and health checks over NATS JetStream. " \
                     "The NATS client runs in a Rust core (async-nats on tokio) built at install time."
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.1"

  # What a source install needs: the Ruby layer, the crate and its lockfile, the extconf.
  spec.files = Dir["lib/**/*.{rb,rake,tt,erb}", "lib/generators/**/*", "src/**/*.rs", "ext/**/*.rb",
                   "Cargo.toml", "Cargo.lock", "README.md", "LICENSE"].reject { |f| f.end_with?(".so") }
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/jetstream_bridge/extconf.rb"]

  spec.metadata["rubygems_mfa_required"] = "true"
end
