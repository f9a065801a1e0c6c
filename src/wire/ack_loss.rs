//! When an ack in flight may have been lost. An ack is a reply on the connection the
//! publish went through, from the stream's leader. It can no longer come once that
//! connection dropped (async-nats does not fail requests in flight: they would wait their
//! whole timeout) or once the stream elected a new leader (the old one may have died
//! holding the message): the connection raises `AckLoss` then, and every publish waiting
//! for an ack sends again (publish/resend.rs).

use futures::StreamExt;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
