# frozen_string_literal: true

require "tmpdir"
require_relative "child_ruby"

# A consumer in its own Ruby process: spec/fixtures/consumer_process.rb run with
# `ruby -I lib` (ChildRuby); its stdout lines are kept in `output`, its stderr in a file.
class ConsumerChild
  FIXTURE = File.join(ChildRuby::ROOT, "spec", "fixtures", "consumer_process.rb")

  attr_reader :stderr_path

  # Gives `group`'s examples `children`, the ConsumerChilds they start, killed after each
  # example once its consumers in this process are stopped.
  def self.killed_after_each(group)
    group.let(:children) { [] }
    group.after do
      stop_consumers
      children.each(&:kill!)
    end
  end

  def initialize(env)
    @stderr_path = File.join(Dir.mktmpdir("consumer-child-"), "stderr.log")
    @child = ChildRuby.start(FIXTURE, env: env, err: @stderr_path)
  end

  def pid = @child.pid
  def output = @child.output

  # Waits for the next stdout line matching `pattern`; returns it.
  def wait_for(pattern, timeout: 15)
    @child.wait_for(pattern, timeout: timeout).string
  rescue RuntimeError => e
    raise "#{e.message}\nstderr:\n#{stderr}"
  end

  def signal(name)
    @child.signal(name)
  end

  # Exit status, or nil if still running after `timeout` seconds.
  def wait_exit(timeout)
    @child.wait(timeout)
  end

  def stderr
    File.exist?(stderr_path) ? File.read(stderr_path) : ""
  end

  def kill!
    @child.kill
  end
end
