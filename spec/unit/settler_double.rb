# frozen_string_literal: true

# Stands in for the core's pull loop (JetstreamBridge's native Consumer) under the
# Processor and the Pool, the seam Testing::Settler uses too: it hands out the messages
# given to it, in order, and records how each was settled. Messages are what the core's
# next_batch returns: JetstreamBridge::Native::Messages.
class SettlerDouble
  attr_reader :settled

  def initialize(messages = [])
    @pending = messages.dup
    @settled = [] # [kind, id, detail]
    @lock = Mutex.new
    @arrived = ConditionVariable.new
    @stop = false
  end

  def self.message(id, event, deliveries: 1, subject: "s.user.created", decode_error: nil)
    JetstreamBridge::Native::Message.new(id: id, subject: subject, event: event, deliveries: deliveries,
                                         decode_error: decode_error, msg_id: "msg-#{id}", stream_seq: id)
  end

  def push(*messages)
    @lock.synchronize do
      @pending.concat(messages)
      @arrived.broadcast
    end
  end

  # Up to `count` messages, waiting up to wait_ms for the first (or until request_stop).
  def next_batch(count, wait_ms)
    @lock.synchronize do
      @arrived.wait(@lock, wait_ms / 1000.0) if @pending.empty? && !@stop
      @pending.shift(count)
    end
  end

  def request_stop
    @lock.synchronize do
      @stop = true
      @arrived.broadcast
    end
  end

  def stop = nil
  def claim(_id) = true
  def headers(_id) = {}
  def returned(id) = record(:returned, id)
  def ack(id) = record(:ack, id)
  def nak(id, delay_ms) = record(:nak, id, delay_ms)
  def term(id) = record(:term, id)
  def dead_letter(id, reason, error_class, _message) = record(:dead_letter, id, [reason, error_class])

  # The first settlement of each id (a later one is what the core ignores: a no-op).
  def outcomes
    @lock.synchronize { @settled.reject { |kind, _, _| kind == :returned }.uniq { |_, id, _| id }.to_h { |kind, id, detail| [id, [kind, detail]] } }
  end

  private

  def record(kind, id, detail = nil)
    @lock.synchronize { @settled << [kind, id, detail] }
    true
  end
end
