//! When a publish is sent again instead of waiting out `request_timeout` for its ack.
//!
//! An ack that can no longer come (wire/ack_loss.rs: a reconnect, a leader election)
//! is not waited for. "No responders" means the stream has no leader at the moment (an
//! election) or does not exist; "duplicate message id is in process" (nats-server 2.11+)
//! answers a resend that overtook its original. In every case the publish is sent again
//! with the same `Nats-Msg-Id`, so the server stores the event once whichever copy
//! reaches it.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;

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
}
