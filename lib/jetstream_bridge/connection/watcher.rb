# frozen_string_literal: true

module JetstreamBridge
  module Connection
    # A thread that hands the core's connection events (disconnects, reconnects, lame duck
    # mode, server errors) to the logger and subscribers as they happen, not only when the
    # app next calls the bridge. It waits in the core with the GVL released (no polling,
    # no Ruby work while nothing happens).
    #
    # Fork: threads do not survive fork(2), and the child's first use connects anew
    # (Connection.client), which starts the child's own watcher for its own connection.
    class Watcher
      # Longest wait in the core before the thread checks its connection is still current.
      WAIT_MS = 1_000

      def initialize(client)
        @client = client
        @thread = Thread.new { watch }
        @thread.name = "jetstream_bridge-events"
        @thread.report_on_exception = false
      end

      # Ends the thread (Connection.close!). Thread#kill wakes the core's wait at once.
      def stop
        @thread.kill
        @thread.join(1)
      end

      private

      def watch
        # Ends once the connection is closed or replaced (or in a forked child, where no
        # current client is this one).
        while Connection.current_client.equal?(@client)
          @client.wait_events(WAIT_MS)
          Connection.drain_events(@client)
        end
      rescue Error => e
        JetstreamBridge.config.logger&.warn("[JetstreamBridge] connection event watcher stopped: #{e.class}: #{e.message}")
      end
    end
  end
end
