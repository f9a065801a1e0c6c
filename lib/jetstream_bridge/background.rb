# frozen_string_literal: true

module JetstreamBridge
  # The clock and the threads of the gem's own work, one way each.
  module Background
    module_function

    # Seconds on the monotonic clock, for durations and deadlines (the wall clock jumps).
    def monotonic = Process.clock_gettime(Process::CLOCK_MONOTONIC)

    # A thread named "jetstream_bridge-<name>" (named before this returns, so Thread.list
    # shows it at once) running the block. With report: false an exception ending it is
    # not printed to stderr (its owner reads or reports it).
    def thread(name, report: false, &block)
      Thread.new do
        Thread.current.report_on_exception = report
        block.call
      end.tap { |thread| thread.name = "jetstream_bridge-#{name}" }
    end
  end
end
