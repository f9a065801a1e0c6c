# frozen_string_literal: true

# Demo of the bridge: "shop" publishes events to "billing" in each documented form and
# as a batch, then "billing" consumes them back through a durable pull consumer.
require "socket"
require "uri"
require "jetstream_bridge"
require_relative "../spec/support/nats_server"

def reachable?(url)
  uri = URI(url)
  Socket.tcp(uri.host, uri.port || 4222, connect_timeout: 1).close
  true
rescue StandardError
  false
end

url = ENV.fetch("NATS_URLS", "nats://127.0.0.1:4222").split(",").first
server = nil
unless reachable?(url)
  server = NatsServer.new.start
  url = server.url
  puts "No NATS at the default address; started nats-server #{server.version} at #{url}"
end

env = "demo#{Process.pid}"
configure = lambda do |app, dest|
  JetstreamBridge.reset!
  JetstreamBridge.configure do |c|
    c.nats_urls = url
    c.env = env
    c.app_name = app
    c.destination_app = dest
    c.use_dlq = true
    c.logger = Logger.new($stdout, level: Logger::WARN)
  end
end

configure.call("shop", "billing")
report = JetstreamBridge.ensure_topology!
puts "Stream #{report['stream']} #{report['action']} with #{(report['added'] + report['covered']).join(', ')}"

JetstreamBridge.publish(resource_type: "user", event_type: "created", payload: { id: 1, email: "ada@example.com" })
JetstreamBridge.publish(event_type: "order.placed", payload: { id: 7, total_cents: 4200 }, trace_id: "req-123")
JetstreamBridge::Publisher.new.publish(event_type: "updated", resource_type: "user", payload: { id: 1 },
                                       event_id: "demo-#{env}-fixed-id", producer: "shop-admin")
# The same event_id again: the server's duplicate window drops it.
JetstreamBridge.publish(event_type: "updated", resource_type: "user", payload: { id: 1 }, event_id: "demo-#{env}-fixed-id")
batch = JetstreamBridge.publish_batch(Array.new(100) { |i| { event_type: "invoice.issued", payload: { id: i } } })
puts "Published 4 single events (1 duplicate dropped) and a batch of #{batch.published} (failed: #{batch.failed.size})"

configure.call("billing", "shop")
seen = []
consumer = JetstreamBridge.subscribe(batch_size: 50) do |event, subject, deliveries|
  seen << event
  if seen.size <= 3
    puts "  received #{event['event_type']} (#{event['resource_type']}) id=#{event['payload']['id']} " \
         "from #{event['producer']} on #{subject} (delivery #{deliveries}, event_id #{event['event_id']})"
  end
end
watchdog = Thread.new do
  deadline = Time.now + 15
  sleep 0.05 until seen.size >= 103 || Time.now > deadline
  consumer.stop!
end
consumer.run!
watchdog.join
puts "  ... #{seen.size} events consumed in all (expected 103: 3 distinct singles + 100 batch)"

health = JetstreamBridge.health_check
puts "Health: healthy=#{health[:healthy]} stream=#{health[:stream][:name]} messages=#{health[:stream][:messages]}"
JetstreamBridge.reset!
server&.cleanup
exit(seen.size == 103 && health[:healthy] ? 0 : 1)
