# frozen_string_literal: true

require "tmpdir"

# RSpec in SPEC_WORKERS processes (2 unless set; 1 runs plain `rspec`), each given a share of
# the files. The specs are isolated per process: each starts its own nats-servers on free
# ports with temporary store dirs, names its PostgreSQL databases after its pid, builds its
# Rails apps and SQLite files in temporary dirs, and keeps its own .rspec_status.
module SpecWorkers
  ROOT = File.expand_path("..", __dir__)

  # Seconds a file takes alone (rspec --profile on the 2-core machine, rounded), for the
  # split; any other file counts 3. The generated Rails apps and the 3-node cluster are
  # most of the run.
  WEIGHTS = {
    "spec/rails/rails_integration_spec.rb" => 100, "spec/hardening/cluster_faults_spec.rb" => 75,
    "spec/generators/generators_spec.rb" => 60, "spec/jetstream_bridge/consumer_spec.rb" => 30,
    "spec/hardening/auth_tls_spec.rb" => 27, "spec/jetstream_bridge/outbox_spec.rb" => 22,
    "spec/rails/rails_exposure_spec.rb" => 20, "spec/jetstream_bridge/resilience_spec.rb" => 20,
    "spec/jetstream_bridge/inbox_spec.rb" => 18, "spec/jetstream_bridge/concurrency_spec.rb" => 15,
    "spec/jetstream_bridge/consumer_faults_spec.rb" => 14, "spec/jetstream_bridge/supervisor_bounds_spec.rb" => 14,
    "spec/support_nats_server_spec.rb" => 11, "spec/rails/app_test_mode_spec.rb" => 9,
    "spec/jetstream_bridge/processes_spec.rb" => 8
  }.freeze

  module_function

  def workers = Integer(ENV.fetch("SPEC_WORKERS", "2")).clamp(1, 8)

  # The files in `count` groups of about equal weight (heaviest first, each to the lightest group).
  def split(files, count)
    groups = Array.new(count) { [] }
    loads = Array.new(count, 0)
    files.sort_by { |file| [-WEIGHTS.fetch(file, 3), file] }.each do |file|
      i = loads.index(loads.min)
      groups[i] << file
      loads[i] += WEIGHTS.fetch(file, 3)
    end
    groups.reject(&:empty?)
  end

  # Runs rspec over `files` (nil: the whole suite); the first worker prints as it goes, the
  # others' output follows when they are done. Fails if any worker failed.
  def run(files = nil, env = {})
    files ||= Dir.glob("spec/**/*_spec.rb", base: ROOT)
    groups = split(files, workers)
    return system(env, "rspec", *files, chdir: ROOT) || abort("rspec failed") if groups.size < 2

    logs = groups.each_index.map { |i| File.join(Dir.mktmpdir("jsb-spec-worker-"), "rspec_#{i + 1}.log") }
    pids = groups.each_with_index.map do |group, i|
      worker_env = env.merge("JSB_RSPEC_STATUS" => ".rspec_status_#{i + 1}") # see spec_helper.rb
      out = i.zero? ? $stdout : logs[i]
      puts "rspec worker #{i + 1}: #{group.size} files#{" (output in #{logs[i]}, shown when it ends)" unless i.zero?}"
      Process.spawn(worker_env, "rspec", *group, chdir: ROOT, out: out, err: i.zero? ? $stderr : %i[child out])
    end
    statuses = pids.map { |pid| Process.wait2(pid).last }
    logs.drop(1).each_with_index { |log, i| puts "\n=== rspec worker #{i + 2} ===", File.read(log) }
    failed = statuses.each_index.reject { |i| statuses[i].success? }.map { |i| i + 1 }
    abort "rspec failed in worker(s) #{failed.join(', ')}" unless failed.empty?
  end
end

desc "Run the RSpec suite against real servers (after compile), in SPEC_WORKERS processes (2)"
task spec: :compile do
  SpecWorkers.run
end

# The wire-facing specs; the database ones (outbox, inbox) do not depend on the server version.
NATS_2_9_SPECS = %w[publish topology stream_limits resilience health secrets consumer consumer_signals consumer_faults
                    server_versions dead_letter dead_letters payload_decoding header_rule].map { |name| "spec/jetstream_bridge/#{name}_spec.rb" }
                                    .push("spec/hardening/bad_input_spec.rb", "spec/hardening/least_privilege_spec.rb").freeze

desc "Run the publish/consume specs again against Debian's nats-server 2.9 (when installed)"
task spec_nats_2_9: :compile do
  binary = "/usr/sbin/nats-server"
  if File.executable?(binary)
    SpecWorkers.run(NATS_2_9_SPECS, { "NATS_SERVER_BIN" => binary })
  else
    warn "skipping: #{binary} is not installed"
  end
end
