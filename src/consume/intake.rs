//! Taking in a delivered message, from either source (a pull's answers, fetch.rs, or a
//! push durable's deliveries, push.rs): tracked as unsettled and queued for Ruby, or
//! given back at once. From here on both sources share everything: next_batch, settling,
//! progress acks, the DLQ copy, giving back at stop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::consume::delivery::Delivery;
use crate::consume::pull_loop::PullLoop;
use crate::consume::unsettled::Unsettled;

/// Longest wait for the round trip that ends a drain (a live connection takes
/// milliseconds; a dead one returns nothing more anyway).
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Unsubscribes `subscription` and hands `each` what the server sent before it heard
/// the unsubscribe (a drain ends with a round trip), so that nothing sent to this
/// process is left to wait out ack_wait.
pub(super) async fn drain(subscription: &mut async_nats::Subscriber, mut each: impl FnMut(async_nats::Message)) {
    if subscription.drain().await.is_err() {
        return; // the connection is gone: nothing more arrives on it
    }
    while let Ok(Some(message)) = tokio::time::timeout(DRAIN_WAIT, subscription.next()).await {
        each(message);
    }
}

impl PullLoop {
    /// Tracks the message and queues it for Ruby; gives it back at once instead when
    /// `give_back` or stopping (nothing more is handed to Ruby then).
    pub(super) fn take_in(&self, message: async_nats::Message, next_id: &AtomicU64, tx: &mpsc::UnboundedSender<Delivery>, give_back: bool) {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let message = jetstream::Message { message, context: self.conn.js.clone() };
        // A message without a reply subject cannot be acked: nothing to hand out.
        let Some(delivery) = self.admit(id, message) else { return };
        if give_back || self.stopping() {
            self.release(id);
            return;
        }
        self.prefetch.queued.fetch_add(1, Ordering::AcqRel);
        if tx.send(delivery).is_err() {
            self.prefetch.queued.fetch_sub(1, Ordering::AcqRel);
            self.release(id);
            return;
        }
        self.wake.notify_one();
    }

    /// Records the message as unsettled; the Delivery Ruby will take.
    fn admit(&self, id: u64, message: jetstream::Message) -> Option<Delivery> {
        let (deliveries, stream_seq) = message
            .info()
            .map(|i| (i.delivered.max(1) as u64, i.stream_sequence))
            .unwrap_or((1, 0));
        let message = message.message; // keeps the reply subject (split() would move it out)
        message.reply.as_ref()?;
        self.position.delivered(stream_seq);
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id").or_else(|| h.get("nats-msg-id")))
            .map(|v| v.to_string());
        let delivery = Delivery {
            id,
            subject: message.subject.clone(),
            deliveries,
            stream_seq,
            msg_id,
            body: message.payload.clone(),
        };
        let unsettled = Unsettled { message, deliveries, stream_seq, last_progress: Instant::now(), claimed: false };
        crate::sync::lock(&self.settlement.unsettled).insert(id, unsettled);
        Some(delivery)
    }
}
