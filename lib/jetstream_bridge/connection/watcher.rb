# frozen_string_literal: true

require "io/wait"

module JetstreamBridge
  module Connection
    # A thread that hands the core's connection events (disconnects, reconnects, lame duck
    # mode, server errors) to the logger and subscribers as they happen, not only when the
    # app next calls the bridge. It waits with the GVL released on a descriptor the core
    # makes readable when an event is queued (no polling, no Ruby work while nothing
    # happens). Why a Ruby IO wait and not a wait inside the core: a Ruby thread waiting
    # on IO also takes the process's signals and delivers them (Ctrl-C, SIGTERM) to the
    # main thread, even while that one is blocked in a publish; two threads both waiting
    # inside the core would leave a signal unhandled until one of them returned.
    #
    # Fork: threads do not survive fork(2), and the child's first use connects anew
    # (Connection.client), which starts the child's own watcher for its own connection.
    class Watcher
      # Longest wait before the thread checks its connection is still current (seconds).
      WAIT = 1.0

      def initialize(client)
        @client = client
        @ready = IO.for_fd(client.events_fd, autoclose: false) # the core owns (and closes) it
        @thread = Background.thread("events") { watch }
      end

      # Ends the thread (Connection.close!). Thread#kill ends its wait at once.
      def stop
        @thread.kill
        @thread.join(1)
      end

      private

      def watch
        # Ends once the connection is closed or replaced (or in a forked child, where no
        # current client is this one).
        while Connection.current_client.equal?(@client)
          @ready.wait_readable(WAIT)
          Connection.drain_events(@client)
        end
      rescue Error => e
        JetstreamBridge.config.logger&.warn("[JetstreamBridge] connection event watcher stopped: #{e.class}: #{e.message}")
      end
    end
  end
end
