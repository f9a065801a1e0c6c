# frozen_string_literal: true

require "tmpdir"

# RSpec in SPEC_WORKERS processes (4 unless set; 1 runs plain `rspec`), each given a share of
# the jobs: a job is a spec file run against one nats-server (the venv's 2.15, or Debian's
# packaged one for the wire-facing files: 2.9 on Debian 12, 2.10 in vendor/roots/trixie;
# skipped where it is the venv's version, as in sid). The specs are isolated per process: each starts its own
# nats-servers on free ports with temporary store dirs, names its PostgreSQL databases
# after its pid, builds its Rails apps and SQLite files in temporary dirs, and keeps its
# own .rspec_status.
#
# Why 4 workers on 2 cores: the specs mostly wait (for servers, acks, child processes,
# timeouts); with 2 workers the machine was 0.6 cores busy on average. 4 workers ran the
# 2.15 files in 3m15s against 5m12s with 2.
module SpecWorkers
  ROOT = File.expand_path("..", __dir__)

  # Seconds a file's examples take (rspec --profile on the 2-core machine, 2026-12-07,
  # rounded; the generated Rails apps add their `rails new`), for the split; any other
  # file counts 2. Wire-facing files run twice (2.15 and 2.9).
  WEIGHTS = {
    "spec/rails/rails_integration_spec.rb" => 100, "spec/hardening/cluster_faults_spec.rb" => 75,
    "spec/jetstream_bridge/outbox_spec.rb" => 48, "spec/jetstream_bridge/consumer_spec.rb" => 43,
    "spec/jetstream_bridge/publish_spec.rb" => 41, "spec/generators/generators_spec.rb" => 45,
    "spec/jetstream_bridge/inbox_spec.rb" => 36, "spec/hardening/auth_tls_spec.rb" => 36,
    "spec/jetstream_bridge/resilience_spec.rb" => 24, "spec/rails/rails_exposure_spec.rb" => 25,
    "spec/jetstream_bridge/concurrency_spec.rb" => 17, "spec/jetstream_bridge/supervisor_bounds_spec.rb" => 16,
    "spec/rails/app_test_mode_spec.rb" => 20, "spec/jetstream_bridge/consumer_faults_spec.rb" => 13,
    "spec/hardening/fork_spec.rb" => 9, "spec/hardening/bad_input_spec.rb" => 9, "spec/jetstream_bridge/topology_spec.rb" => 8,
    "spec/support_nats_server_spec.rb" => 7, "spec/jetstream_bridge/processes_spec.rb" => 7,
    "spec/jetstream_bridge/stream_limits_spec.rb" => 6, "spec/jetstream_bridge/secrets_spec.rb" => 6,
    "spec/jetstream_bridge/health_spec.rb" => 6, "spec/jetstream_bridge/dead_letters_spec.rb" => 5,
    "spec/jetstream_bridge/subject_layout_spec.rb" => 5, "spec/unit/supervisor_spec.rb" => 5,
    "spec/jetstream_bridge/push_consumer_spec.rb" => 20, "spec/web/dashboard_browser_spec.rb" => 37,
    "spec/web/web_rack_spec.rb" => 2
  }.freeze

  # The wire-facing specs, run again on Debian's packaged nats-server; the database ones (outbox,
  # inbox) do not depend on the server version.
  PACKAGED_SERVER_SPECS = %w[publish topology stream_limits resilience health secrets consumer consumer_signals
                             consumer_faults server_versions dead_letter dead_letters payload_decoding header_rule
                             push_consumer]
                          .map { |name| "spec/jetstream_bridge/#{name}_spec.rb" }
                          .push("spec/hardening/bad_input_spec.rb", "spec/hardening/least_privilege_spec.rb",
                                "spec/hardening/push_least_privilege_spec.rb").freeze
  PACKAGED_SERVER = "/usr/sbin/nats-server"

  # One spec file against one server: `env` is what the rspec process gets.
  Job = Struct.new(:file, :env) do
    def weight = WEIGHTS.fetch(file, 2)
  end

  module_function

  def workers = Integer(ENV.fetch("SPEC_WORKERS", "4")).clamp(1, 8)

  # Left out in the Debian roots (bin/in-root sets JSB_ROOT): the dashboard's browser spec
  # needs Chromium, which bin/setup installs on this machine only.
  HOST_ONLY = %w[spec/web/dashboard_browser_spec.rb].freeze

  def all_files
    files = Dir.glob("spec/**/*_spec.rb", base: ROOT).sort
    ENV["JSB_ROOT"] ? files - HOST_ONLY : files
  end

  # The 2.15 jobs of `files`, and the `packaged` ones on Debian's binary when it is
  # installed (and is not the venv's version).
  def jobs(files: all_files, packaged: files & PACKAGED_SERVER_SPECS)
    jobs = files.map { |file| Job.new(file, {}) }
    return jobs if packaged.empty?
    return jobs.tap { warn "skipping the packaged server run: #{PACKAGED_SERVER} is not installed" } unless File.executable?(PACKAGED_SERVER)

    require_relative "../spec/support/nats_binaries"
    version = NatsBinaries.version_of(PACKAGED_SERVER)
    if version == NatsBinaries.version_of(NatsBinaries::VENV_BIN)
      return jobs.tap { warn "skipping the packaged server run: #{PACKAGED_SERVER} is #{version}, as the venv's" }
    end

    jobs + packaged.map { |file| Job.new(file, { "NATS_SERVER_BIN" => PACKAGED_SERVER }) }
  end

  # The jobs in `count` groups of about equal weight (heaviest first, each to the lightest group).
  def split(jobs, count)
    groups = Array.new(count) { [] }
    loads = Array.new(count, 0)
    jobs.sort_by { |job| [-job.weight, job.file, job.env.size] }.each do |job|
      i = loads.index(loads.min)
      groups[i] << job
      loads[i] += job.weight
    end
    groups.reject(&:empty?)
  end

  # Runs the jobs; the first worker prints as it goes, the others' output follows when they
  # are done. A worker runs one rspec per server its jobs need, in turn. Fails if any failed.
  def run(jobs)
    groups = split(jobs, workers)
    logs = groups.each_index.map { |i| i.zero? ? nil : File.join(Dir.mktmpdir("jsb-spec-worker-"), "rspec_#{i + 1}.log") }
    threads = groups.each_with_index.map do |group, i|
      puts "rspec worker #{i + 1}: #{group.size} jobs#{" (output in #{logs[i]}, shown when it ends)" if logs[i]}"
      Thread.new { run_group(group, i + 1, logs[i]) }
    end
    failed = threads.each_with_index.reject { |thread, _| thread.value }.map { |_, i| i + 1 }
    logs.compact.each_with_index { |log, i| puts "\n=== rspec worker #{i + 2} ===", File.read(log) }
    abort "rspec failed in worker(s) #{failed.join(', ')}" unless failed.empty?
  end

  # One worker's jobs, one rspec process per server; true when all passed.
  def run_group(group, number, log)
    out = log ? File.open(log, "w") : $stdout
    group.group_by(&:env).map do |env, same_server|
      worker_env = env.merge("JSB_RSPEC_STATUS" => ".rspec_status_#{number}#{'_2_9' unless env.empty?}") # see spec_helper.rb
      out.puts "--- #{env.empty? ? 'nats-server 2.15' : "nats-server #{env['NATS_SERVER_BIN']}"}: #{same_server.size} files" if log
      pid = Process.spawn(worker_env, "rspec", *same_server.map(&:file), chdir: ROOT, out: out, err: log ? out : $stderr)
      Process.wait2(pid).last.success?
    end.all?
  ensure
    out.close if log
  end
end

desc "Run the whole RSpec suite against real servers (after compile): every file on 2.15, the wire-facing ones on the packaged server too, in SPEC_WORKERS processes (4)"
task spec_all: :compile do
  SpecWorkers.run(SpecWorkers.jobs)
end

desc "Run every spec file on nats-server 2.15 only (after compile)"
task spec: :compile do
  SpecWorkers.run(SpecWorkers.jobs(packaged: []))
end

desc "Run the publish/consume specs against Debian's packaged nats-server only (2.9 on Debian 12; after compile)"
task spec_packaged: :compile do
  SpecWorkers.run(SpecWorkers.jobs(files: [], packaged: SpecWorkers::PACKAGED_SERVER_SPECS))
end

# The Debian roots bin/setup builds (vendor/roots/NAME, run through bin/in-root): the same
# suite on their Ruby and Rails, built there with their own cargo target dir.
SPEC_ROOTS = {
  "trixie" => "Ruby 3.3, Rails 7.2.2, sqlite3 1.7; Debian's nats-server 2.10 for the wire-facing files",
  "sid" => "Ruby 3.3, Rails 7.2.4, sqlite3 2.x"
}.freeze

SPEC_ROOTS.each do |name, what|
  desc "Compile and run spec_all in vendor/roots/#{name} (#{what})"
  task "spec_#{name}" do
    sh File.join(SpecWorkers::ROOT, "bin/in-root"), name, "rake", "compile", "spec_all"
  end
end

desc "spec_all in each Debian root (#{SPEC_ROOTS.keys.join(', ')}), one after the other"
task spec_roots: SPEC_ROOTS.keys.map { |name| "spec_#{name}" }
