//! Fetching: pull requests answered on one subscription, with prefetch bounded to one
//! batch beyond the one Ruby works through; binding (and re-binding) the durable where
//! this consumer was, so a durable deleted under it neither skips nor replays messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::consume::delivery::Delivery;
use crate::consume::intake;
use crate::consume::pull_loop::PullLoop;
use crate::errors::Result;
use crate::topology::ensure::{self, Mode};

/// Prefetch bound, in batches (queued for Ruby plus requested, beyond the batch Ruby
/// works through): one keeps the next batch on its way, and a worker never holds more
/// than two batches (the README's "batch_size is the prefetch bound").
const PREFETCH_BATCHES: usize = 1;

/// How long one pull request waits on the server for messages. It also bounds how long
/// stop waits for a request in flight (whose late arrivals are given back).
pub(super) const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How long binding the durable again after a failed pull may take before pulling goes on
/// (the JetStream API is silent during a cluster election, up to request_timeout).
const REBIND_LIMIT: Duration = Duration::from_secs(1);

/// Why a pull ended early. `rebind`: the durable may be gone (deleted, or not answering
/// at all), so it is provisioned (or checked) again before the next pull. A lost
/// connection, a leader change or silence leave the durable as it was: pulling again is
/// enough, and binding during a cluster election would wait out request_timeout for
/// nothing (an API request goes unanswered until the election ends).
pub(super) struct PullFailure {
    reason: String,
    rebind: bool,
}

impl PullFailure {
    fn pull_again(reason: &str) -> PullFailure {
        PullFailure { reason: reason.to_string(), rebind: false }
    }
}

/// The next leader election of the durable; never, without a subscription to them.
async fn next_election(elections: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match elections {
        Some(elections) => elections.next().await,
        None => std::future::pending().await,
    }
}

/// The subscription every pull request of a fetch loop is answered on. It outlives a
/// failed pull: async-nats subscribes it again on reconnect, and the server may still
/// serve a request made before the disconnect (it is valid while its reply subject has
/// interest): a message sent to it is then read, not dropped to wait out ack_wait.
pub(super) struct PullInbox {
    subject: String,
    answers: async_nats::Subscriber,
}

impl PullLoop {
    /// The fetch task: binds the durable (provisioning it, or checking it exists), pulls
    /// until stopped, and after a failure pauses, looks for unreadable messages (when the
    /// client failed to parse one) and pulls again, binding first when the durable may be
    /// gone (see PullFailure), resuming where it was.
    pub(super) async fn fetch_loop(self: Arc<Self>, tx: mpsc::UnboundedSender<Delivery>) {
        let next_id = AtomicU64::new(1);
        let mut failures: u32 = 0;
        // Set when a pull is cut short by a message async-nats could not read.
        let mut look_for_unreadable = false;
        let mut parse_failures = crate::runtime::parse_failures::count();
        // Kept from one pull to the next: see PullInbox.
        let mut inbox = None;
        // PullLoop::start has bound the durable; false after a failure that needs it bound again.
        let mut bound = true;
        loop {
            if self.stopping() {
                return;
            }
            // Binding and the search below wait on the server (up to request_timeout each
            // when it is away): stop must not wait for them.
            if !bound {
                let binding = tokio::select! {
                    binding = tokio::time::timeout(REBIND_LIMIT, self.bind()) => binding,
                    _ = self.stopped() => return,
                };
                // Unanswered within the limit: a cluster election, most likely (the
                // durable's own leader answers). Pull: the pull tells when it is back,
                // and a durable really gone is bound after the next failure.
                if let Ok(Err(e)) = binding {
                    failures += 1;
                    self.log("error", "consumer_error", format!("consumer {} unavailable: {e}", self.spec.consumer.durable));
                    if self.pause(failures).await {
                        return;
                    }
                    continue;
                }
            }
            // Cut short by stop, a move to the DLQ is made again later: its copy has a
            // Nats-Msg-Id of its own, so the server stores it once.
            if std::mem::take(&mut look_for_unreadable) {
                tokio::select! {
                    _ = self.dead_letter_unreadable() => {}
                    _ = self.stopped() => return,
                }
            }
            match self.pull(&mut inbox, &next_id, &tx, &mut failures).await {
                Ok(()) => return, // stopped
                Err(failure) => {
                    failures += 1;
                    self.log("warn", "consumer_error", format!("pull from {} failed: {}", self.spec.consumer.durable, failure.reason));
                    // Silence that goes on may be a durable gone quietly: bind again then.
                    bound = !failure.rebind && failures < 3;
                    let now = crate::runtime::parse_failures::count();
                    // The search asks the JetStream API: not without verify_topology.
                    look_for_unreadable = self.spec.mode != Mode::Off && now != parse_failures;
                    parse_failures = now;
                    if self.pause(failures).await {
                        return;
                    }
                }
            }
        }
    }

    /// Pull requests (one batch each) that all answer on one subscription, so messages are
    /// read in the order the server sends them (stream order, as from a single consumer)
    /// however many requests are in flight. A new request goes out whenever what is queued
    /// for Ruby plus what is still requested leaves room for a whole batch within
    /// PREFETCH_BATCHES: the next batch is on its way while Ruby works through this one,
    /// and prefetch stays bounded. Every delivered message is read at once and tracked
    /// (kept alive, given back at stop). Returns Ok once stopped and every request has
    /// run out (late arrivals are given back), Err when the durable must be bound again.
    pub(super) async fn pull(
        &self,
        kept: &mut Option<PullInbox>,
        next_id: &AtomicU64,
        tx: &mpsc::UnboundedSender<Delivery>,
        failures: &mut u32,
    ) -> std::result::Result<(), PullFailure> {
        let batch = self.spec.batch_size.max(1);
        let client = &self.conn.client;
        if kept.is_none() {
            let subject = client.new_inbox();
            let answers = client.subscribe(subject.clone()).await.map_err(|e| PullFailure::pull_again(&e.to_string()))?;
            *kept = Some(PullInbox { subject, answers });
        }
        let PullInbox { subject: inbox, answers } = kept.as_mut().expect("made above");
        let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", self.spec.consumer.stream, self.spec.consumer.durable);
        let request = Bytes::from(format!("{{\"batch\":{batch},\"expires\":{}}}", PULL_EXPIRES.as_nanos()));
        let mut disconnects = self.conn.disconnects.subscribe();
        // Requests held by a durable's leader die with it (a cluster node killed): once a
        // new leader is elected, new ones go out at once instead of after the silence
        // below. An account that may not subscribe to the advisory waits for the silence.
        let (stream, durable) = (&self.spec.consumer.stream, &self.spec.consumer.durable);
        let mut elections = client.subscribe(format!("$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{durable}")).await.ok();
        // The server answers every request within PULL_EXPIRES; silence means a lost connection.
        let mut last_heard = tokio::time::Instant::now();
        let result = 'pull: loop {
            let stopping = self.stopping();
            let holding_back = self.settlement.overdue.load(Ordering::Acquire);
            while !stopping && !holding_back && self.prefetch.queued.load(Ordering::Acquire) + self.prefetch.requested.load(Ordering::Acquire) + batch <= PREFETCH_BATCHES * batch {
                self.prefetch.requested.fetch_add(batch, Ordering::AcqRel);
                if let Err(e) = client.publish_with_reply(next_subject.clone(), inbox.clone(), request.clone()).await {
                    break 'pull Err(PullFailure::pull_again(&format!("pull request failed: {e}")));
                }
            }
            let waiting_for_answers = self.prefetch.requested.load(Ordering::Acquire) > 0;
            // nats-server 2.9 keeps serving a pull request whose inbox is gone (messages
            // given back at stop were redelivered to it, and lost until ack_wait): there,
            // the requests run out (PULL_EXPIRES) and late arrivals are given back.
            // Without a connection nothing more arrives before the requests die (a drain
            // would wait out DRAIN_WAIT), and the inbox, dropped, is not subscribed again
            // on reconnect.
            let connected = self.conn.is_connected();
            if stopping && (!waiting_for_answers || !connected || self.conn.server_at_least(2, 10)) {
                if waiting_for_answers && connected {
                    self.drain_answers(answers, next_id, tx).await;
                }
                break Ok(());
            }
            tokio::select! {
                answer = answers.next() => {
                    let Some(message) = answer else {
                        *kept = None;
                        break Err(PullFailure::pull_again("the pull subscription was closed"));
                    };
                    last_heard = tokio::time::Instant::now();
                    *failures = 0;
                    if let Err(e) = self.receive(message, next_id, tx) {
                        break Err(e);
                    }
                }
                _ = self.prefetch.taken.notified() => {} // room for another request, perhaps
                _ = disconnects.changed() => break Err(PullFailure::pull_again("the connection was lost during the pull")),
                Some(_) = next_election(&mut elections) => {
                    self.prefetch.requested.store(0, Ordering::Release);
                    last_heard = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(last_heard + PULL_EXPIRES + Duration::from_secs(2)), if waiting_for_answers => {
                    break Err(PullFailure::pull_again("pull requests got no answer (connection lost?)"));
                }
                _ = self.stopped(), if !stopping => {}
                // A safety net only: every change above is notified.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        if result.is_ok() {
            if let Some(mut done) = kept.take() {
                let _ = done.answers.unsubscribe().await;
            }
        }
        // What was still requested died with these requests, or is answered on the kept
        // inbox once the connection is back (a little beyond the prefetch bound then).
        self.prefetch.requested.store(0, Ordering::Release);
        result
    }

    /// Ends the requests in flight at once instead of waiting up to PULL_EXPIRES for
    /// them: the inbox is unsubscribed (the server drops a pull request nobody listens to
    /// any more), and what the server sent before the unsubscribe reached it is read to
    /// the end (a drain ends with a round trip) and given back.
    async fn drain_answers(&self, answers: &mut async_nats::Subscriber, next_id: &AtomicU64, tx: &mpsc::UnboundedSender<Delivery>) {
        intake::drain(answers, |message| {
            let _ = self.receive(message, next_id, tx); // stopping: a message is given back
        })
        .await;
    }

    /// One answer to a pull request: a message (taken in: intake.rs) or a status that
    /// ends requests (their unfilled count is no longer requested). Err for a status that
    /// ends the pull.
    pub(super) fn receive(&self, message: async_nats::Message, next_id: &AtomicU64, tx: &mpsc::UnboundedSender<Delivery>) -> std::result::Result<(), PullFailure> {
        if let Some(status) = message.status {
            let unfilled = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Pending-Messages"))
                .and_then(|v| v.as_str().parse::<usize>().ok());
            if let Some(n) = unfilled {
                let _ = self.prefetch.requested.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(n)));
            }
            return match (status.as_u16(), unfilled) {
                // Request expired (408) or found nothing (404), or a heartbeat (100).
                (408 | 404, Some(_)) | (100, _) => Ok(()),
                (code, _) => {
                    let description = message.description.as_deref().unwrap_or("");
                    // A new leader of the durable: the durable is still there.
                    let rebind = !(code == 409 && description.to_ascii_lowercase().contains("leadership change"));
                    Err(PullFailure { reason: format!("the server ended the pull: {code} {description}"), rebind })
                }
            };
        }
        let _ = self.prefetch.requested.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(1)));
        self.take_in(message, next_id, tx, false);
        Ok(())
    }

    /// Provisions the durable (or checks it exists), recreating a deleted one where this
    /// consumer was, so nothing is skipped or replayed.
    pub(super) async fn bind(&self) -> Result<()> {
        let spec = &self.spec;
        ensure::durable(&self.conn, &spec.consumer, spec.stream.as_ref(), spec.mode, self.position.resume_at()).await
    }

    /// Sleeps a growing delay (max 5 s); true when stopping meanwhile.
    pub(super) async fn pause(&self, failures: u32) -> bool {
        let delay = Duration::from_millis((100u64 << failures.min(6)).min(5_000));
        tokio::select! {
            _ = tokio::time::sleep(delay) => self.stopping(),
            _ = self.stopped() => true,
        }
    }
}
