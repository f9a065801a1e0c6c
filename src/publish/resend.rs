//! When a publish is sent again instead of waiting out `request_timeout` for its ack.
//!
//! An ack is a reply on the connection the publish went through, from the stream's
//! leader. It can no longer come once that connection dropped (async-nats does not fail
//! requests in flight: they would wait their whole timeout) or once the stream elected a
//! new leader (the old one may have died holding the message). "No responders" means the
//! stream has no leader at the moment (an election) or does not exist; "duplicate message
//! id is in process" (nats-server 2.11+) answers a resend that overtook its original. In
//! every case the publish is sent again with the same `Nats-Msg-Id`, so the server stores the event once
//! whichever copy reaches it.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// Raised each time an ack in flight may have been lost: a reconnect, or a leader
/// election of the stream. Every publish waiting for an ack sends again.
#[derive(Debug)]
pub struct AckLoss {
    signal: watch::Sender<u64>,
}

impl AckLoss {
    pub fn new() -> AckLoss {
        AckLoss { signal: watch::channel(0).0 }
    }

    pub fn raise(&self) {
        self.signal.send_modify(|count| *count += 1);
    }

    /// A receiver that has seen every loss so far.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.signal.subscribe()
    }
}

/// Waits for the next loss. Never returns once the sender is gone (it lives as long as
/// the connection, which the waiting publish holds).
pub async fn next_loss(losses: &mut watch::Receiver<u64>) {
    if losses.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The server publishes this when `stream` has a new leader, in the stream's account.
pub fn leader_elected_subject(stream: &str) -> String {
    format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}")
}

/// Raises `loss` at each leader election of `stream`, until the returned guard is dropped
/// (the subscription holds the connection open). An account that may not subscribe to the
/// advisory gets a server error in the log, and publishes fall back to the retry pauses.
pub async fn follow_leader_elections(client: &async_nats::Client, stream: &str, loss: std::sync::Arc<AckLoss>) -> Option<StopOnDrop> {
    let mut elections = client.subscribe(leader_elected_subject(stream)).await.ok()?;
    let task = tokio::spawn(async move {
        while elections.next().await.is_some() {
            loss.raise();
        }
    });
    Some(StopOnDrop(task.abort_handle()))
}

/// Ends a background task when dropped.
#[derive(Debug)]
pub struct StopOnDrop(AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pauses between sends that found no responders: short at first (an election may be
/// ending), growing to a cap so a long election costs a few sends a second. A leader
/// election ends a pause at once (see AckLoss).
#[derive(Debug, Default)]
pub struct NoResponderPause {
    sends: u32,
}

impl NoResponderPause {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(250);

    pub fn next(&mut self) -> Duration {
        let pause = Self::FIRST.saturating_mul(1 << self.sends.min(5)).min(Self::MAX);
        self.sends += 1;
        pause
    }
}

/// Whether any stream captures `subject`, asked of the JetStream API (its meta leader,
/// which answers during a stream's own election): Some(false) means no stream does, so
/// "no responders" will not end; None means no answer within `timeout` (a meta leader
/// election, or an account without `$JS.API.STREAM.NAMES`).
pub async fn stream_exists(js: &jetstream::Context, subject: &str, timeout: Duration) -> Option<bool> {
    let body = json!({ "subject": subject });
    let request = crate::wire::api::request(js, "STREAM.NAMES", &body);
    let answer = tokio::time::timeout(timeout, request).await.ok()?.ok()?;
    Some(answer.get("total").and_then(serde_json::Value::as_u64)? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_a_cap() {
        let mut pause = NoResponderPause::default();
        let pauses: Vec<u64> = (0..8).map(|_| pause.next().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 250, 250, 250]);
    }

    #[tokio::test]
    async fn a_loss_wakes_every_waiter_once() {
        let loss = AckLoss::new();
        let (mut a, mut b) = (loss.watch(), loss.watch());
        loss.raise();
        next_loss(&mut a).await;
        next_loss(&mut b).await;
        let again = tokio::time::timeout(Duration::from_millis(20), next_loss(&mut a)).await;
        assert!(again.is_err(), "a loss is seen once");
    }
}
