# frozen_string_literal: true

desc "Run the RSpec suite against real servers (after compile)"
task spec: :compile do
  sh "rspec", chdir: File.expand_path("..", __dir__)
end
