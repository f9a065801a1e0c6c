//! Publishing with a JetStream ack: one at a time, or many with acks in flight.

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishError, PublishErrorKind},
    message::PublishMessage,
};
use async_nats::Subject;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};

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
    let denials = crate::events::permission_denials();
    let publish = async {
        let ack_future = send(js, msg).await.map_err(|e| map_error(subject, e))?;
        ack_future.await.map_err(|e| map_error(subject, e))
    };
    let ack = tokio::select! {
        ack = publish => ack?,
        denial = crate::events::denied(denials, subject) => {
            return Err(BridgeError::new(Kind::Authorization, format!("permission denied: this account may not publish to {subject:?} ({denial})")));
        }
    };
    Ok(Ack { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate })
}

/// Publishes every message, keeping up to `window` acks in flight; results keep input order.
pub async fn publish_batch(js: &jetstream::Context, msgs: &[Outgoing], window: usize) -> Vec<Result<Ack>> {
    let mut results: Vec<Option<Result<Ack>>> = (0..msgs.len()).map(|_| None).collect();
    let mut in_flight = FuturesUnordered::new();
    for (index, msg) in msgs.iter().enumerate() {
        while in_flight.len() >= window.max(1) {
            if let Some((i, r)) = in_flight.next().await {
                results[i] = Some(r);
            }
        }
        match send(js, msg).await {
            Ok(ack_future) => in_flight.push(async move {
                let r = ack_future
                    .await
                    .map(|a| Ack { stream: a.stream, sequence: a.sequence, duplicate: a.duplicate })
                    .map_err(|e| map_error(&msg.subject, e));
                (index, r)
            }),
            Err(e) => results[index] = Some(Err(map_error(&msg.subject, e))),
        }
    }
    while let Some((i, r)) = in_flight.next().await {
        results[i] = Some(r);
    }
    results.into_iter().map(|r| r.expect("every message has a result")).collect()
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
