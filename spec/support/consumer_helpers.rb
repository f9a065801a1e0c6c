# frozen_string_literal: true

require "json"
require "securerandom"
require "timeout"
require_relative "nats_api"

# Helpers for the consumer specs: publish "as the other app" onto the subject the bridge
# consumes, run consumers on background threads (always stopped after the example), record
# handler calls thread-safely, and look at the durable on the server through NatsApi.
# Include it in the example groups that use it (`include ConsumerHelpers`).
module ConsumerHelpers
  # Handler calls, recorded from the consumer thread, read from the example.
  class Calls
    Call = Struct.new(:event, :subject, :deliveries, :at, keyword_init: true) do
      def id = event.is_a?(Hash) ? event["event_id"] : nil
    end

    def initialize
      @mutex = Mutex.new
      @calls = []
    end

    def record(event, subject, deliveries)
      call = Call.new(event: event, subject: subject, deliveries: deliveries,
                      at: Process.clock_gettime(Process::CLOCK_MONOTONIC))
      @mutex.synchronize { @calls << call }
      call
    end

    def to_a = @mutex.synchronize { @calls.dup }
    def size = @mutex.synchronize { @calls.size }
    def for(id) = to_a.select { |c| c.id == id }
    def ids = to_a.map(&:id)
    def distinct_ids = ids.uniq
  end

  def dest_subject = JetstreamBridge.config.destination_subject
  def dlq_subject = JetstreamBridge.config.dlq_subject
  def stream_name = JetstreamBridge.config.stream_name
  def bridge_url = JetstreamBridge.config.urls.first

  # Publishes `count` events onto the subject this bridge consumes (as the other app
  # would); returns their event ids in order.
  def publish_incoming(count = 1, **fields)
    events = Array.new(count) do |i|
      { resource_type: "user", event_type: "created", payload: { id: i + 1, n: i },
        subject: dest_subject }.merge(fields)
    end
    result = JetstreamBridge.publish_batch(events)
    raise "publish failed: #{result.failed.inspect}" unless result.success?

    result.event_ids
  end

  # Publishes an arbitrary body onto the consumed subject; returns its stream sequence.
  def publish_raw_body(body, msg_id: "raw-#{SecureRandom.hex(6)}")
    publish_as_is(dest_subject, body, msg_id).seq
  end

  # Starts a recording consumer whose handler holds the first of `ids` for a second, waits
  # until that handler runs and the consumer holds more messages than that one, and stops
  # it, which must take under 5 s and leave that call the only one; the calls.
  def stop_while_handling(ids, **consumer_options)
    entered = Queue.new
    consumer, calls = run_recording_consumer(**consumer_options) do |c|
      next unless c.id == ids.first

      entered << c
      sleep 1.0 # the scenario: the handler in flight when stop! comes
    end
    thread = running_consumers.last.last
    first = pop_within(entered, 10) # mid-handler (it sleeps 1 s)
    eventually { consumer_info["num_ack_pending"] > 1 } # it holds more than that one: those go back at stop
    expect(stop_consumer(consumer, thread)).to be < 5
    expect(calls.ids).to eq([first.id])
    calls
  end

  # The progress-ack scenario, for a consumer configured with a 1 s ack_wait: three events,
  # the first handled for 2.5 s. Each is handled once, none delivered again after it was
  # handled, and those waiting behind the slow one were given back. The consumer info once
  # all are acked.
  def expect_slow_handler_kept_alive(**consumer_options)
    slow, *rest = publish_incoming(3)
    _, calls = run_recording_consumer(**consumer_options) { |c| sleep 2.5 if c.id == slow } # the scenario: past ack_wait
    eventually(timeout: 10) { calls.distinct_ids.size == 3 }
    info = wait_all_acked
    expect(calls.for(slow).map(&:deliveries)).to eq([1])
    # The server delivered none again after it was handled: the slow one was not redelivered after ack_wait.
    expect(info.dig("delivered", "consumer_seq")).to eq(deliveries_handled(calls))
    # Those waiting behind it were given back once it outlasted ack_wait, then taken again.
    rest.each { |id| expect(calls.for(id).size).to eq(1) }
    expect(log_output).to match(/WARN.*past ack_wait or max_handler_time.*waiting message\(s\) given back/)
    info
  end

  # A running consumer whose handler records its call, says it entered, and hangs until
  # released: [consumer, its run! thread, its Calls, entered (a Queue it pushes to on
  # entering), release (a Queue to push to)].
  def start_hung_consumer(**subscribe_options)
    release = Queue.new
    entered = Queue.new
    calls = Calls.new
    consumer = JetstreamBridge.subscribe(**subscribe_options) do |e, s, d|
      calls.record(e, s, d)
      entered << true
      release.pop
    end
    [consumer, start_consumer(consumer), calls, entered, release]
  end

  # Waits for the next item of `queue`, at most `seconds`.
  def pop_within(queue, seconds) = Timeout.timeout(seconds) { queue.pop }

  # Runs consumer.run! on a thread; the consumer is stopped after the example.
  def start_consumer(consumer)
    thread = Thread.new do
      consumer.run!
    rescue Exception => e # rubocop:disable Lint/RescueException
      consumer_errors << e
      raise
    end
    thread.report_on_exception = false
    thread.name = "spec-consumer"
    running_consumers << [consumer, thread]
    thread
  end

  # A recorded consumer (block handler), started on a thread: [consumer, calls].
  def run_recording_consumer(calls = Calls.new, **opts, &behaviour)
    consumer = JetstreamBridge::Consumer.new(**opts) do |event, subject, deliveries|
      call = calls.record(event, subject, deliveries)
      behaviour&.call(call)
    end
    start_consumer(consumer)
    [consumer, calls]
  end

  def running_consumers
    @running_consumers ||= []
  end

  def consumer_errors
    @consumer_errors ||= []
  end

  # Stops the consumer and waits for its thread (bounded); returns the seconds it took.
  # Raises when the thread does not end in time or ended with an exception.
  def stop_consumer(consumer, thread, timeout: 15)
    started = monotonic
    consumer.stop!
    joined = join_quietly(thread, timeout)
    raise "consumer did not stop within #{timeout}s" unless joined
    raise consumer_errors.first if consumer_errors.any?

    running_consumers.reject! { |_, t| t == thread }
    monotonic - started
  end

  def stop_consumers
    running_consumers.each do |consumer, thread|
      consumer.stop!
      next if join_quietly(thread, 15)

      thread.kill
      join_quietly(thread, 5)
    end
    running_consumers.clear
  end

  # Thread#join that does not re-raise the thread's exception; nil on timeout.
  def join_quietly(thread, timeout)
    thread.join(timeout)
  rescue Exception # rubocop:disable Lint/RescueException
    thread
  end

  def consumer_info(durable = JetstreamBridge.config.durable_name)
    NatsApi.consumer_info(bridge_url, stream_name, durable)
  end

  # The stream sequence of the last message stored on `subject` (the one this bridge
  # consumes), 0 when there is none.
  def last_consumed_seq(subject = dest_subject)
    reply = NatsApi.request(bridge_url, "$JS.API.STREAM.MSG.GET.#{stream_name}", { last_by_subj: subject })
    reply.dig("message", "seq").to_i
  end

  # Waits until the durable can deliver nothing more of what is stored up to `through`
  # (default: the last message on the consumed subject now): its ack floor covers it, and
  # no message is pending or waiting for its ack. A message acked (or terminated) on the
  # server is never delivered again, so every handler call it gets has been made by then.
  # Returns the consumer info.
  def wait_all_acked(durable = JetstreamBridge.config.durable_name, through: last_consumed_seq, timeout: 10)
    eventually(timeout: timeout) do
      info = consumer_info(durable)
      info if info && info["num_ack_pending"].zero? && info["num_pending"].zero? &&
              info.dig("ack_floor", "stream_seq").to_i >= through
    end
  end

  # The deliveries the server has made when none came after the one each message was
  # handled at: the delivery count of each message's last handler call, summed. Compare
  # with consumer_info's delivered.consumer_seq once all are acked (wait_all_acked): more there
  # means a message was delivered again after it was handled (redelivered while held).
  def deliveries_handled(calls)
    calls.to_a.group_by(&:id).sum { |_, list| list.map(&:deliveries).max }
  end

  # Messages stored on the DLQ subject: [[subject, body, headers], ...].
  def dlq_messages
    info = JetstreamBridge::Connection.client.stream_info(stream_name)
    return [] unless info

    stream_messages.select { |subject, _, _| subject == dlq_subject }
  end

  # The stored message (subject, body, headers) with this stream sequence.
  def stored_message(seq)
    NatsApi.get_message(bridge_url, stream_name, seq)
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
