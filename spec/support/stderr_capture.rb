# frozen_string_literal: true

require "tempfile"

# Captures what is written to file descriptor 2 during a block, native output included
# (the core's panics and anything the client prints go there, not through $stderr).
module StderrCapture
  def capturing_stderr
    saved = $stderr.dup
    Tempfile.create("jsb-stderr") do |file|
      $stderr.reopen(file)
      begin
        yield
      ensure
        $stderr.flush
        $stderr.reopen(saved)
      end
      File.read(file.path)
    end
  end
end
