//! Publishing with a JetStream ack: one at a time, or many with acks in flight.

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishError, PublishErrorKind},
    message::PublishMessage,
};
use async_nats::Subject;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::broadcast;

use crate::errors::{BridgeError, Kind, Result};

/// One message to publish. `msg_id` becomes the `Nats-Msg-Id` header (exact spelling:
/// the server's duplicate detection ignores other casings).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub body: Bytes,
    pub msg_id: String,
}

/// The server's acknowledgement.
#[derive(Debug, Clone)]
pub struct Ack {
    pub stream: String,
    pub sequence: u64,
    pub duplicate: bool,
}

/// Sends `msg` (borrowed: async-nats copies the subject and id into the message anyway,
/// and the body is shared) and returns the future of its ack.
async fn send(js: &jetstream::Context, msg: &Outgoing) -> std::result::Result<PublishAckFuture, PublishError> {
    let message = PublishMessage::build().payload(msg.body.clone()).message_id(&msg.msg_id);
    js.send_publish(Subject::from(msg.subject.as_str()), message).await
}

/// Publishes one message and waits for its ack (bounded by the context timeout).
pub async fn publish(js: &jetstream::Context, msg: &Outgoing) -> Result<Ack> {
    let subject = msg.subject.as_str();
    // Publishing where the account may not gets no ack, only a server error: fail at once.
    let denials = crate::wire::events::permission_denials();
    let publish = async {
        let ack_future = send(js, msg).await.map_err(|e| map_error(subject, e))?;
        ack_future.await.map_err(|e| map_error(subject, e))
    };
    let ack = tokio::select! {
        ack = publish => ack?,
        denial = crate::wire::events::denied(denials, subject) => return Err(denied(subject, &denial)),
    };
    Ok(Ack { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate })
}

/// The permission denials a batch has seen, kept from one part of a large batch to the
/// next (see `publish_batch`).
pub struct Denials {
    denials: broadcast::Receiver<String>,
    /// False once the denial channel is closed (it lives as long as the process).
    watching: bool,
    /// (subject, the server's message); a batch rarely has more than one subject.
    denied: Vec<(String, String)>,
}

impl Denials {
    /// Watches the denials from now on.
    pub fn watch() -> Denials {
        Denials { denials: crate::wire::events::permission_denials(), watching: true, denied: Vec::new() }
    }
}

/// Publishes every message, keeping up to `window` acks in flight; results keep input order.
/// A subject the server refuses (a permission denial names it) fails at once: its rows
/// in flight stop waiting for acks that will never come, and later rows for it (in this
/// call, or a later one given the same `denials`) are not sent. A large batch is sent in
/// parts, one call each, so that only one part's messages are held at a time.
pub async fn publish_batch(js: &jetstream::Context, msgs: &[Outgoing], window: usize, denials: &mut Denials) -> Vec<Result<Ack>> {
    let mut batch = Batch { results: (0..msgs.len()).map(|_| None).collect(), denials, sent: 0, waiting: 0 };
    let mut in_flight = FuturesUnordered::new();
    for (index, msg) in msgs.iter().enumerate() {
        while batch.waiting >= window.max(1) {
            batch.next_outcome(&mut in_flight, msgs).await;
        }
        batch.note_denials(msgs);
        batch.sent = index + 1;
        if let Some(error) = batch.denial_error(&msg.subject) {
            batch.results[index] = Some(Err(error));
            continue;
        }
        match send(js, msg).await {
            Ok(ack_future) => {
                batch.waiting += 1;
                in_flight.push(async move {
                    let r = ack_future
                        .await
                        .map(|a| Ack { stream: a.stream, sequence: a.sequence, duplicate: a.duplicate })
                        .map_err(|e| map_error(&msg.subject, e));
                    (index, r)
                })
            }
            Err(e) => batch.results[index] = Some(Err(map_error(&msg.subject, e))),
        }
    }
    while batch.waiting > 0 {
        batch.next_outcome(&mut in_flight, msgs).await;
    }
    batch.results.into_iter().map(|r| r.expect("every message has a result")).collect()
}

/// A batch's bookkeeping: results so far, and the subjects the server refused.
struct Batch<'a> {
    results: Vec<Option<Result<Ack>>>,
    denials: &'a mut Denials,
    /// Rows the send loop has reached (sent, or failed before sending).
    sent: usize,
    /// Rows sent whose outcome is still unknown.
    waiting: usize,
}

impl Batch<'_> {
    /// Waits for one row's ack, or for a denial that ends the wait of some rows.
    async fn next_outcome<F>(&mut self, in_flight: &mut FuturesUnordered<F>, msgs: &[Outgoing])
    where
        F: std::future::Future<Output = (usize, Result<Ack>)>,
    {
        tokio::select! {
            // Acks first: no denial watch is registered while an ack is ready.
            biased;
            Some((index, result)) = in_flight.next() => {
                // A row already failed by a denial keeps that outcome.
                if self.results[index].is_none() {
                    self.results[index] = Some(result);
                    self.waiting -= 1;
                }
            }
            message = self.denials.denials.recv(), if self.denials.watching => match message {
                Ok(message) => self.deny(message, msgs),
                // Denials missed while this batch fell behind: later rows' denials still come.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => self.denials.watching = false,
            }
        }
    }

    /// Takes the denials that arrived already, without waiting.
    fn note_denials(&mut self, msgs: &[Outgoing]) {
        while let Ok(message) = self.denials.denials.try_recv() {
            self.deny(message, msgs);
        }
    }

    /// Fails, at once, every row in flight for a subject the denial names; rows not sent
    /// yet fail as the send loop reaches them.
    fn deny(&mut self, message: String, msgs: &[Outgoing]) {
        let Some(subject) = crate::wire::events::denied_subject(&message) else { return };
        if self.denials.denied.iter().any(|(s, _)| s == subject) || !msgs.iter().any(|m| m.subject == subject) {
            return; // known already, or about another publisher's subject
        }
        let subject = subject.to_string();
        for index in 0..self.sent {
            if self.results[index].is_none() && msgs[index].subject == subject {
                self.results[index] = Some(Err(denied(&subject, &message)));
                self.waiting -= 1;
            }
        }
        self.denials.denied.push((subject, message));
    }

    /// The error for a row whose subject the server refused.
    fn denial_error(&self, subject: &str) -> Option<BridgeError> {
        let (_, message) = self.denials.denied.iter().find(|(s, _)| s == subject)?;
        Some(denied(subject, message))
    }
}

fn denied(subject: &str, denial: &str) -> BridgeError {
    BridgeError::new(Kind::Authorization, format!("permission denied: this account may not publish to {subject:?} ({denial})"))
}

fn map_error(subject: &str, e: PublishError) -> BridgeError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => BridgeError::new(
            Kind::StreamNotFound,
            format!("no stream captures subject {subject:?} (the server had no responders)"),
        ),
        PublishErrorKind::TimedOut => BridgeError::new(
            Kind::PublishTimeout,
            format!("publish to {subject:?} was not acknowledged in time (is NATS reachable?)"),
        ),
        PublishErrorKind::MaxPayloadExceeded => {
            BridgeError::new(Kind::PayloadTooLarge, format!("publish to {subject:?} refused: {e}"))
        }
        PublishErrorKind::BrokenPipe => {
            BridgeError::new(Kind::Connection, format!("publish to {subject:?} failed: connection lost"))
        }
        _ => BridgeError::new(Kind::Publish, format!("publish to {subject:?} failed: {e}")),
    }
}
