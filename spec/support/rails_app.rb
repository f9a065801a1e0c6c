# frozen_string_literal: true

require "fileutils"
require "open3"
require "rbconfig"
require "socket"
require "timeout"
require "tmpdir"

# A real Rails application generated with `rails new`, using this repository's gem by path,
# for specs that exercise the generators, the rake tasks and the HTTP endpoints end to end.
# No dependency on the gem being loadable in the spec process: everything runs in the app's
# own processes, under its own Gemfile.
#
#   app = RailsApp.new.create!              # rails new + Gemfile + bundle install --local
#   app = RailsApp.new(extra_gems: %w[rspec-rails]).create!  # ...with more gems from the machine
#   out, status = app.rails("g", "jetstream_bridge:install")
#   out, status = app.run("bin/rails", "db:migrate", env: { "DATABASE_URL" => url })
#   app.rails!("db:migrate")                # raises RailsApp::CommandFailed with the output
#   port = app.start_server                 # bin/rails server on a free loopback port
#   app.stop_server
#   pid = app.spawn_process(RbConfig.ruby, "bin/rails", "jetstream_bridge:consume", env: {...})
#   status = app.stop_process(pid)          # SIGTERM, wait, Process::Status (nil if killed)
#   app.cleanup                             # stops the server, removes the temp dir
#
# The app is API-only, minimal, on SQLite, with a Gemfile cut down to gems installed on the
# machine (railties, activerecord, actionpack, sqlite3, pg, webrick and jetstream_bridge,
# plus any extra_gems, which must be installed too), so `bundle install --local` resolves
# offline. Commands run with a clean Bundler environment (nothing from the spec process's
# bundle leaks in), RAILS_ENV=development and no DATABASE_URL unless the caller passes them.
class RailsApp
  REPO_ROOT = File.expand_path("../..", __dir__)
  # Gems the app's Gemfile lists (besides jetstream_bridge): all come from the machine.
  GEMS = %w[railties activerecord actionpack sqlite3 pg webrick].freeze
  DEFAULT_TIMEOUT = 300

  class Error < StandardError; end

  # A command exited non-zero (run!/rails!).
  class CommandFailed < Error; end

  # A command outlived its timeout; it and its process group were killed.
  class CommandTimeout < Error; end

  attr_reader :name, :gem_path, :extra_gems, :dir, :root, :server_port

  # name:     the app's directory and module name (JbRailsApp); app_name defaults derive from it
  # gem_path: where the jetstream_bridge gem is (this repository, unless
  #           JETSTREAM_BRIDGE_GEM_PATH points at another copy)
  # extra_gems: gem names the Gemfile lists after GEMS
  def initialize(name: "jb_rails_app", gem_path: ENV.fetch("JETSTREAM_BRIDGE_GEM_PATH", REPO_ROOT), extra_gems: [])
    @name = name
    @gem_path = File.expand_path(gem_path)
    @extra_gems = extra_gems
    @dir = nil
    @root = nil
    @server_pid = nil
    @server_port = nil
  end

  # Generates the app in a new temporary directory and bundles it. Raises with the command's
  # output when a step fails (and removes the directory).
  def create!
    @dir = Dir.mktmpdir("jb-rails-app-")
    @root = File.join(@dir, name)
    rails_new!
    write_gemfile!
    disable_listen!
    out, status = run("bundle", "install", "--local")
    raise CommandFailed, "bundle install --local failed in #{root}:\n#{out}" unless status.success?

    self
  rescue StandardError
    cleanup
    raise
  end

  # Runs `rails g` for each generator, in order; returns self.
  def generate!(*generators)
    generators.each { |generator| rails!("g", generator) }
    self
  end

  # Runs a command in the app directory; returns [stdout + stderr, Process::Status].
  # env entries override the defaults; a nil value unsets a variable.
  def run(*cmd, env: {}, timeout: DEFAULT_TIMEOUT)
    capture(cmd, chdir: root, env: default_env.merge(env), timeout: timeout)
  end

  # Like run, but raises CommandFailed (with the output) unless the command succeeds.
  def run!(*cmd, **opts)
    out, status = run(*cmd, **opts)
    raise CommandFailed, "`#{cmd.join(' ')}` failed (#{status.inspect}):\n#{out}" unless status.success?

    out
  end

  # bin/rails with the given arguments (generators, db tasks, runner, rake tasks).
  def rails(*args, **opts)
    run(RbConfig.ruby, "bin/rails", *args, **opts)
  end

  def rails!(*args, **opts)
    run!(RbConfig.ruby, "bin/rails", *args, **opts)
  end

  # Runs Ruby code inside the booted app (bin/rails runner) from a temporary script file.
  def runner(code, **opts)
    script = File.join(root, "tmp", "runner_#{Process.pid}_#{rand(1 << 30)}.rb")
    FileUtils.mkdir_p(File.dirname(script))
    File.write(script, code)
    rails("runner", script, **opts)
  ensure
    FileUtils.rm_f(script) if script
  end

  # Absolute path of a file in the app.
  def path(*parts)
    File.join(root, *parts)
  end

  # The development SQLite database `rails new` configured: db/ up to Rails 7.1, storage/ since 7.2.
  def sqlite_database
    %w[storage db].map { |dir| path(dir, "development.sqlite3") }.find { |f| File.exist?(f) } or
      raise Error, "no development.sqlite3 under storage/ or db/ in #{root}"
  end

  def read(relative)
    File.read(path(relative))
  end

  # Writes a file in the app, creating its directory.
  def write(relative, text)
    FileUtils.mkdir_p(File.dirname(path(relative)))
    File.write(path(relative), text)
  end

  # Paths (relative to the app root) matching a glob.
  def glob(pattern)
    Dir.glob(pattern, base: root).sort
  end

  # Starts `bin/rails server` on 127.0.0.1 (free port unless given) and waits until it accepts
  # connections. Output goes to log/server_test.log. Returns the port.
  def start_server(port: nil, env: {}, timeout: 60)
    raise Error, "server already running (pid #{@server_pid})" if @server_pid

    port ||= self.class.free_port
    log = path("log", "server_test.log")
    FileUtils.mkdir_p(File.dirname(log))
    full_env = default_env.merge(env)
    @server_pid = unbundled do
      Process.spawn(full_env, RbConfig.ruby, "bin/rails", "server", "-b", "127.0.0.1", "-p", port.to_s,
                    "-P", path("tmp", "pids", "server_test_#{port}.pid"),
                    chdir: root, in: File::NULL, out: log, err: %i[child out], pgroup: true)
    end
    @server_port = port
    wait_for_port(port, timeout, log)
    port
  end

  # Starts a long-running command in the app (a consumer or relay rake task) in its own
  # process group, output to `log` (relative to the app root). Returns the pid.
  def spawn_process(*cmd, env: {}, log: "log/process_test.log")
    out = path(log)
    FileUtils.mkdir_p(File.dirname(out))
    unbundled do
      Process.spawn(default_env.merge(env), *cmd, chdir: root, in: File::NULL, out: out, err: %i[child out],
                                                  pgroup: true)
    end
  end

  # Sends `signal` to a spawned process and waits up to `timeout` seconds; returns its
  # Process::Status, or nil when it had to be killed.
  def stop_process(pid, signal: "TERM", timeout: 30)
    Process.kill(signal, pid)
    deadline = Time.now + timeout
    loop do
      _, status = Process.waitpid2(pid, Process::WNOHANG)
      return status if status
      break if Time.now > deadline

      sleep 0.1
    end
    terminate(pid, 1)
    nil
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  # TERM, then KILL after a grace period; the server's whole process group.
  def stop_server(grace: 10)
    return unless @server_pid

    terminate(@server_pid, grace)
    @server_pid = nil
    @server_port = nil
  end

  def cleanup
    stop_server
    FileUtils.rm_rf(@dir) if @dir
    @dir = nil
  end

  def self.free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  private

  def rails_new!
    # The railties executable of the newest installed railties, run with this Ruby: works
    # whether or not a `rails` binstub is on PATH.
    cmd = [RbConfig.ruby, "-e", 'load Gem.bin_path("railties", "rails")', "--",
           "new", name, "--api", "--minimal", "--skip-bundle", "--skip-git", "--skip-javascript",
           "-d", "sqlite3"]
    out, status = capture(cmd, chdir: dir, env: {}, timeout: DEFAULT_TIMEOUT)
    raise CommandFailed, "rails new failed:\n#{out}" unless status.success? && File.exist?(path("bin", "rails"))
  end

  def write_gemfile!
    lines = ['source "https://rubygems.org"', ""]
    lines.concat((GEMS + extra_gems).map { |g| "gem #{g.inspect}" })
    lines << "gem \"jetstream_bridge\", path: #{gem_path.inspect}"
    File.write(path("Gemfile"), "#{lines.join("\n")}\n")
    FileUtils.rm_f(path("Gemfile.lock"))
  end

  # The evented file watcher needs the listen gem, which is not installed.
  def disable_listen!
    file = path("config", "environments", "development.rb")
    text = File.read(file)
    File.write(file, text.gsub(/^(\s*)(config\.file_watcher\s*=.*)$/, '\1# \2'))
  end

  def default_env
    {
      "BUNDLE_GEMFILE" => path("Gemfile"),
      "RAILS_ENV" => "development",
      "DATABASE_URL" => nil,
      "DISABLE_SPRING" => "1"
    }
  end

  def capture(cmd, chdir:, env:, timeout:)
    unbundled do
      Open3.popen2e(env, *cmd, chdir: chdir, in: File::NULL, pgroup: true) do |_stdin, out, thr|
        reader = Thread.new { out.read }
        unless thr.join(timeout)
          terminate(thr.pid, 5)
          raise CommandTimeout, "`#{cmd.join(' ')}` still running after #{timeout}s:\n#{reader.value}"
        end
        [reader.value, thr.value]
      end
    end
  end

  # The environment from before Bundler set up the spec process (no BUNDLE_*, no
  # -rbundler/setup in RUBYOPT), so the app resolves its own Gemfile.
  def unbundled(&block)
    if defined?(Bundler) && Bundler.respond_to?(:with_unbundled_env)
      Bundler.with_unbundled_env(&block)
    else
      saved = ENV.to_h
      begin
        ENV.keys.grep(/\ABUNDLE_|\ARUBYOPT\z|\ARUBYLIB\z/).each { |k| ENV.delete(k) }
        yield
      ensure
        ENV.replace(saved)
      end
    end
  end

  def terminate(pid, grace)
    signal_group("TERM", pid)
    deadline = Time.now + grace
    loop do
      return if Process.waitpid(pid, Process::WNOHANG)
      break if Time.now > deadline

      sleep 0.1
    end
    signal_group("KILL", pid)
    Process.waitpid(pid)
  rescue Errno::ECHILD, Errno::ESRCH
    nil
  end

  def signal_group(sig, pid)
    Process.kill(sig, -pid)
  rescue Errno::ESRCH
    begin
      Process.kill(sig, pid)
    rescue Errno::ESRCH
      nil
    end
  end

  def wait_for_port(port, timeout, log)
    deadline = Time.now + timeout
    loop do
      begin
        TCPSocket.new("127.0.0.1", port).close
        return
      rescue SystemCallError
        nil
      end
      if Process.waitpid(@server_pid, Process::WNOHANG)
        @server_pid = nil
        raise Error, "rails server exited before listening:\n#{File.exist?(log) ? File.read(log) : ''}"
      end
      if Time.now > deadline
        stop_server
        raise Error, "rails server not listening on #{port} after #{timeout}s:\n#{File.read(log)}"
      end
      sleep 0.2
    end
  end
end
