# frozen_string_literal: true

desc "Run the RSpec suite against real servers (after compile)"
task spec: :compile do
  sh "rspec", chdir: File.expand_path("..", __dir__)
end

# The wire-facing specs; the database ones (outbox, inbox) do not depend on the server version.
NATS_2_9_SPECS = %w[publish topology stream_limits resilience health secrets consumer consumer_signals consumer_faults
                    server_versions dead_letter dead_letters payload_decoding].map { |name| "spec/jetstream_bridge/#{name}_spec.rb" }
                                    .push("spec/hardening/bad_input_spec.rb", "spec/hardening/least_privilege_spec.rb").freeze

desc "Run the publish/consume specs again against Debian's nats-server 2.9 (when installed)"
task spec_nats_2_9: :compile do
  binary = "/usr/sbin/nats-server"
  if File.executable?(binary)
    sh({ "NATS_SERVER_BIN" => binary }, "rspec", *NATS_2_9_SPECS, chdir: File.expand_path("..", __dir__))
  else
    warn "skipping: #{binary} is not installed"
  end
end
