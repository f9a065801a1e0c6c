//! The push source: a push durable sends its messages to a deliver subject, and this
//! process takes its share through a queue subscription in the durable's deliver group
//! (the server hands each message to one member of the group). What arrives is taken in
//! as a pull's answers are (intake.rs), so next_batch, settling, progress acks, the DLQ
//! copy and giving back are the pull loop's own.
//!
//! Nothing here asks the JetStream API (with verify_topology off, nothing at all does):
//! an account that may not use `$JS.API` consumes from a push durable provisioned
//! beforehand, and settles through the messages' `$JS.ACK...` reply subjects.
//!
//! A push durable sends whatever its max_ack_pending allows; there is no request to hold
//! back. So when this process must take no more (every handler thread overdue, see
//! settle.rs, or stopping) it unsubscribes: the server then sends the group's other
//! members what it would have sent here, and what it sent before it heard the
//! unsubscribe is given back at once. Once a handler returns, it subscribes again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::consume::delivery::Delivery;
use crate::consume::intake;
use crate::consume::pull_loop::PullLoop;
use crate::errors::{BridgeError, Kind};
use crate::topology::durable::PushDelivery;
use crate::topology::ensure::Mode;

/// Bound on provisioning the durable again after it was deleted under this consumer.
const REBIND_LIMIT: Duration = Duration::from_secs(5);

/// How long after the deletion advisory the durable is made again. The server sends the
/// advisory before it has removed the durable's store: made again at once, the new
/// durable's files made nats-server 2.9 fail the deletion ("directory not empty"), and an
/// info request could still find the old one and leave it be.
const REBIND_DELAY: Duration = Duration::from_secs(1);

/// What this process has already said about messages it cannot take, so a misrouted
/// subject is logged once, not once per message.
#[derive(Default)]
struct Reported {
    foreign: bool,
    not_jetstream: bool,
}

/// The next deletion of the durable; never, without a subscription to them.
async fn next_deletion(deletions: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match deletions {
        Some(deletions) => deletions.next().await,
        None => std::future::pending().await,
    }
}

impl PullLoop {
    /// The push source task: subscribes to the deliver subject in the deliver group and
    /// takes in what arrives until stopped; unsubscribed (drained) while every handler
    /// thread is overdue, and at stop.
    pub(super) async fn push_loop(self: Arc<Self>, delivery: PushDelivery, tx: mpsc::UnboundedSender<Delivery>) {
        let next_id = AtomicU64::new(1);
        let mut reported = Reported::default();
        let mut failures: u32 = 0;
        let mut disconnects = self.conn.disconnects.subscribe();
        let mut parse_failures = crate::runtime::parse_failures::count();
        // A durable deleted under a push consumer sends nothing more, and nothing says so
        // on the deliver subject: with provisioning, its deletion advisory makes it again
        // where this consumer was. Without, an operator owns the durable.
        let deletions = match self.spec.mode {
            Mode::Provision => {
                let (stream, durable) = (&self.spec.consumer.stream, &self.spec.consumer.durable);
                self.conn.client.subscribe(format!("$JS.EVENT.ADVISORY.CONSUMER.DELETED.{stream}.{durable}")).await.ok()
            }
            Mode::Verify | Mode::Off => None,
        };
        let mut deletions = deletions;
        // The server refuses a subscription the account may not make with an error and
        // nothing more: without this, the consumer would wait for messages forever.
        let denial = crate::wire::events::denied(crate::wire::events::permission_denials(), &delivery.subject);
        tokio::pin!(denial);
        loop {
            if !self.wait_while_holding_back().await {
                return; // stopping
            }
            let subscribed = self.conn.client.queue_subscribe(delivery.subject.clone(), delivery.group.clone()).await;
            let mut deliveries = match subscribed {
                Ok(deliveries) => deliveries,
                Err(e) => {
                    failures += 1;
                    self.log("warn", "consumer_error", format!("consumer {} cannot subscribe to {}: {e}", self.spec.consumer.durable, delivery.subject));
                    if self.pause(failures).await {
                        return;
                    }
                    continue;
                }
            };
            failures = 0;
            while !self.stopping() && !self.holding_back() {
                tokio::select! {
                    message = deliveries.next() => match message {
                        Some(message) => self.take_pushed(message, &delivery, &next_id, &tx, &mut reported, false),
                        None => break, // the connection was closed
                    },
                    _ = self.prefetch.taken.notified() => {} // holding back now, perhaps
                    _ = self.stopped() => {}
                    // async-nats subscribes again after a reconnect. A disconnect caused by a
                    // message the client could not read repeats at every redelivery: such
                    // messages go to the DLQ (unreadable.rs; it asks the JetStream API).
                    Ok(()) = disconnects.changed() => {
                        let now = crate::runtime::parse_failures::count();
                        if now != parse_failures && self.spec.mode != Mode::Off {
                            let search = async {
                                if !self.pause(1).await {
                                    self.dead_letter_unreadable().await;
                                }
                            };
                            tokio::select! {
                                _ = search => {}
                                _ = self.stopped() => {}
                            }
                        }
                        parse_failures = now;
                    }
                    Some(_) = next_deletion(&mut deletions) => self.bind_again().await,
                    why = &mut denial => {
                        let message = format!(
                            "consumer {} may not subscribe to its delivery subject {} ({why}): allow it in the account's subscribe permissions",
                            self.spec.consumer.durable, delivery.subject
                        );
                        self.log("error", "consumer_error", message.clone());
                        self.break_with(BridgeError::new(Kind::Authorization, message));
                    }
                }
            }
            // Holding back or stopping: what the server sent before it heard the
            // unsubscribe goes back at once, to the group's other members.
            intake::drain(&mut deliveries, |message| self.take_pushed(message, &delivery, &next_id, &tx, &mut reported, true)).await;
            if self.stopping() {
                return;
            }
        }
    }

    /// Every handler thread is overdue: the messages waiting have been given back and
    /// this process takes no more until one returns (settle.rs).
    fn holding_back(&self) -> bool {
        self.settlement.overdue.load(Ordering::Acquire)
    }

    /// Waits while holding back; false once stopping.
    async fn wait_while_holding_back(&self) -> bool {
        while self.holding_back() && !self.stopping() {
            tokio::select! {
                _ = self.prefetch.taken.notified() => {} // a handler returned
                _ = self.stopped() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {} // a safety net only
            }
        }
        !self.stopping()
    }

    /// One message on the deliver subject. A delivery of this durable is taken in (given
    /// back at once when `give_back`). A flow control request (a durable made elsewhere
    /// with flow control) is answered, or the server would send nothing more; a
    /// heartbeat is ignored. Anything else is not this durable's to settle: another
    /// durable delivering to the same subject (its acks are not ours to send), or a
    /// plain publish to it; logged once and left alone.
    fn take_pushed(
        &self,
        message: async_nats::Message,
        delivery: &PushDelivery,
        next_id: &AtomicU64,
        tx: &mpsc::UnboundedSender<Delivery>,
        reported: &mut Reported,
        give_back: bool,
    ) {
        if let Some(status) = message.status {
            if let (100, Some(reply)) = (status.as_u16(), message.reply) {
                let client = self.conn.client.clone();
                self.runtime.spawn(async move {
                    let _ = client.publish(reply, Bytes::new()).await;
                });
            }
            return;
        }
        let message = jetstream::Message { message, context: self.conn.js.clone() };
        let consumer = &self.spec.consumer;
        let owner = message.info().map(|info| (info.stream.to_string(), info.consumer.to_string()));
        match owner {
            Ok((stream, durable)) if stream == consumer.stream && durable == consumer.durable => {
                self.take_in(message.message, next_id, tx, give_back);
            }
            Ok((stream, durable)) => {
                if !std::mem::replace(&mut reported.foreign, true) {
                    self.log(
                        "error",
                        "consumer_error",
                        format!(
                            "delivery subject {} also receives the messages of durable {durable} on stream {stream}: left unsettled (each durable needs a delivery subject of its own)",
                            delivery.subject
                        ),
                    );
                }
            }
            Err(_) => {
                if !std::mem::replace(&mut reported.not_jetstream, true) {
                    self.log("warn", "consumer_error", format!("a message on delivery subject {} is not a JetStream delivery (no ack subject): ignored", delivery.subject));
                }
            }
        }
    }

    /// The durable was deleted under this consumer: provisioned again where this
    /// consumer was (fetch.rs's bind), so nothing is skipped or replayed.
    async fn bind_again(&self) {
        let durable = &self.spec.consumer.durable;
        tokio::select! {
            _ = tokio::time::sleep(REBIND_DELAY) => {}
            _ = self.stopped() => return,
        }
        match tokio::time::timeout(REBIND_LIMIT, self.bind()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.log("error", "consumer_error", format!("consumer {durable} was deleted and could not be made again: {e}")),
            Err(_) => self.log("error", "consumer_error", format!("consumer {durable} was deleted and making it again took over {}s", REBIND_LIMIT.as_secs())),
        }
    }
}
