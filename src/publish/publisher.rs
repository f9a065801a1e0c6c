//! Publishing with a JetStream ack: one at a time, or many with acks in flight. A publish
//! whose ack can no longer come is sent again at once (see `resend`); `request_timeout`
//! bounds each event from its first send, resends included.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishError, PublishErrorKind},
    publish::PublishAck,
    message::PublishMessage,
};
use async_nats::Subject;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::errors::{BridgeError, Kind, Result};
use crate::publish::resend::{stream_exists, NoResponderPause};
use crate::wire::ack_loss::next_loss;
use crate::wire::connection::Connection;

/// One message to publish. `msg_id` becomes the `Nats-Msg-Id` header (exact spelling:
/// the server's duplicate detection ignores other casings).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub body: Bytes,
    pub msg_id: String,
    /// Headers besides Nats-Msg-Id (a dead letter replayed); events have none.
    pub headers: Option<async_nats::HeaderMap>,
}

/// The server's acknowledgement. `duplicate` is also true when the server stored an
/// earlier copy of a publish sent again (see `resend`): the event is stored once either way.
#[derive(Debug, Clone)]
pub struct Ack {
    pub stream: String,
    pub sequence: u64,
    pub duplicate: bool,
}

impl From<PublishAck> for Ack {
    fn from(ack: PublishAck) -> Ack {
        Ack { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate }
    }
}

/// How long the check for a stream behind "no responders" may take at most.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Sends `msg` (borrowed: async-nats copies the subject and id into the message anyway,
/// and the body is shared) and returns the future of its ack.
async fn send(js: &jetstream::Context, msg: &Outgoing) -> std::result::Result<PublishAckFuture, PublishError> {
    let mut message = PublishMessage::build().payload(msg.body.clone());
    if let Some(headers) = &msg.headers {
        message = message.headers(headers.clone());
    }
    let message = message.message_id(&msg.msg_id);
    js.send_publish(Subject::from(msg.subject.as_str()), message).await
}

async fn send_and_wait(js: &jetstream::Context, msg: &Outgoing) -> std::result::Result<PublishAck, PublishError> {
    send(js, msg).await?.await
}

fn is_no_responders(e: &PublishError) -> bool {
    e.kind() == PublishErrorKind::StreamNotFound
}

/// JetStream's answer (2.11+) to a publish whose Nats-Msg-Id is still being stored: a
/// resend that overtook its original. Its outcome is not known yet: send again after a
/// pause, and the stored one is acked as a duplicate.
const MSG_ID_IN_PROCESS: u64 = 10158;

fn is_in_process(e: &PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|api| api.error_code().0 == MSG_ID_IN_PROCESS)
}

/// Whether "no responders" for `subject` can end: false only when the JetStream API says
/// no stream captures it (unknown counts as yes: the stream may be mid-election, and a
/// connection without API use never asks).
async fn stream_may_exist(conn: &Connection, subject: &str, deadline: Instant) -> bool {
    if !conn.api {
        return true;
    }
    let time = PROBE_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
    stream_exists(&conn.js, subject, time).await != Some(false)
}

/// Publishes one message and waits for its ack, sending it again whenever the ack can no
/// longer come, until `request_timeout` has passed since the first send.
pub async fn publish(conn: &Connection, msg: &Outgoing) -> Result<Ack> {
    let subject = msg.subject.as_str();
    // Publishing where the account may not gets no ack, only a server error: fail at once.
    let denials = crate::wire::events::permission_denials();
    tokio::select! {
        ack = send_until_acked(conn, msg, Instant::now() + conn.request_timeout) => ack,
        denial = crate::wire::events::denied(denials, subject) => Err(denied(subject, &denial)),
    }
}

/// The sends of one publish: again after each ack loss, and after a pause while the
/// stream has no leader (or the copy sent before is still being stored), up to `deadline`.
async fn send_until_acked(conn: &Connection, msg: &Outgoing, deadline: Instant) -> Result<Ack> {
    let subject = msg.subject.as_str();
    let mut losses = conn.ack_loss.watch();
    let mut pause = NoResponderPause::default();
    let (mut probed, mut no_leader, mut first) = (false, false, true);
    loop {
        // The first send's ack wait ends at the deadline by itself (the context's timeout
        // is request_timeout); a later send's would end after it. Only resends pay for a
        // timer of their own (the common publish is on the hot path).
        let send = async {
            if first {
                return send_and_wait(&conn.js, msg).await;
            }
            tokio::time::timeout_at(deadline, send_and_wait(&conn.js, msg))
                .await
                .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)))
        };
        // None: the ack can no longer come (see AckLoss): send again at once.
        let outcome = tokio::select! {
            outcome = send => Some(outcome),
            _ = next_loss(&mut losses) => None,
        };
        first = false;
        let paused = match outcome {
            None => false,
            Some(Ok(ack)) => return Ok(ack.into()),
            Some(Err(e)) if e.kind() == PublishErrorKind::TimedOut => return Err(unacknowledged(subject, no_leader)),
            Some(Err(e)) if is_no_responders(&e) => {
                no_leader = true;
                if !std::mem::replace(&mut probed, true) && !stream_may_exist(conn, subject, deadline).await {
                    return Err(map_error(subject, e));
                }
                true
            }
            Some(Err(e)) if is_in_process(&e) => true,
            Some(Err(e)) => return Err(map_error(subject, e)),
        };
        if paused {
            let until = deadline.min(Instant::now() + pause.next());
            tokio::select! {
                _ = next_loss(&mut losses) => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        if Instant::now() >= deadline {
            return Err(unacknowledged(subject, no_leader));
        }
    }
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
/// A row whose ack can no longer come is sent again, as in `publish`, each row bounded by
/// `request_timeout` from its first send. A subject the server refuses (a permission
/// denial names it) fails at once: its rows in flight stop waiting for acks that will
/// never come, and later rows for it (in this call, or a later one given the same
/// `denials`) are not sent. A large batch is sent in parts, one call each, so that only
/// one part's messages are held at a time.
pub async fn publish_batch(conn: &Connection, msgs: &[Outgoing], window: usize, denials: &mut Denials) -> Vec<Result<Ack>> {
    let mut batch = Batch {
        conn,
        msgs,
        results: (0..msgs.len()).map(|_| None).collect(),
        rows: Vec::with_capacity(msgs.len()),
        denials,
        waiting: 0,
        oldest: 0,
        in_flight: FuturesUnordered::new(),
        losses: conn.ack_loss.watch(),
        parked: Vec::new(),
        pause: NoResponderPause::default(),
        resume_at: None,
        probed: Vec::new(),
    };
    for (index, msg) in msgs.iter().enumerate() {
        while batch.waiting >= window.max(1) {
            batch.next_outcome().await;
        }
        batch.note_denials();
        batch.rows.push(Row { deadline: Instant::now() + conn.request_timeout, sends: 0, no_leader: false });
        batch.waiting += 1;
        match batch.denial_error(&msg.subject) {
            Some(error) => batch.finish(index, Err(error)),
            None => batch.transmit(index).await,
        }
    }
    while batch.waiting > 0 {
        batch.next_outcome().await;
    }
    batch.results.into_iter().map(|r| r.expect("every message has a result")).collect()
}

/// A batch row sent (or failed before sending).
struct Row {
    /// When the row fails unacknowledged: request_timeout after its first send.
    deadline: Instant,
    /// Sends so far: a failure of an earlier send is stale (a later one is on its way).
    sends: u32,
    /// A send found no responders: the stream had no leader.
    no_leader: bool,
}

/// The ack of one send of a row.
struct AckWait {
    index: usize,
    send: u32,
    ack: <PublishAckFuture as std::future::IntoFuture>::IntoFuture,
}

impl std::future::Future for AckWait {
    type Output = (usize, u32, std::result::Result<PublishAck, PublishError>);

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let (index, send) = (self.index, self.send);
        self.ack.as_mut().poll(cx).map(|outcome| (index, send, outcome))
    }
}

/// A batch's bookkeeping: results so far, rows waiting, and the subjects refused.
struct Batch<'a> {
    conn: &'a Connection,
    msgs: &'a [Outgoing],
    results: Vec<Option<Result<Ack>>>,
    /// One per row reached by the send loop.
    rows: Vec<Row>,
    denials: &'a mut Denials,
    /// Rows reached whose outcome is still unknown.
    waiting: usize,
    /// No row below this one is waiting.
    oldest: usize,
    in_flight: FuturesUnordered<AckWait>,
    losses: watch::Receiver<u64>,
    /// Rows whose last send found no responders (or its copy still being stored), sent
    /// again at `resume_at`.
    parked: Vec<usize>,
    pause: NoResponderPause,
    resume_at: Option<Instant>,
    /// Subjects that found no responders, and whether a stream may capture them.
    probed: Vec<(String, bool)>,
}

impl Batch<'_> {
    /// Waits for one row's outcome, a denial, an ack loss (every waiting row is sent
    /// again), the end of a no-responders pause, or the oldest waiting row's deadline.
    async fn next_outcome(&mut self) {
        while self.results[self.oldest].is_some() {
            self.oldest += 1;
        }
        let oldest_deadline = self.rows[self.oldest].deadline;
        let resume_at = self.resume_at;
        tokio::select! {
            // Acks first: no other wait is registered while an ack is ready.
            biased;
            Some((index, send, outcome)) = self.in_flight.next() => self.settle(index, send, outcome).await,
            message = self.denials.denials.recv(), if self.denials.watching => match message {
                Ok(message) => self.deny(message),
                // Denials missed while this batch fell behind: later rows' denials still come.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => self.denials.watching = false,
            },
            _ = next_loss(&mut self.losses) => {
                self.parked.clear();
                self.resume_at = None;
                for index in self.oldest..self.rows.len() {
                    if self.results[index].is_none() {
                        self.transmit(index).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(resume_at.unwrap_or(oldest_deadline)), if resume_at.is_some() => {
                self.resume_at = None;
                for index in std::mem::take(&mut self.parked) {
                    if self.results[index].is_none() {
                        self.transmit(index).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(oldest_deadline) => self.expire(),
        }
    }

    /// Sends a row (again), or fails it if it cannot be sent.
    async fn transmit(&mut self, index: usize) {
        let msg = &self.msgs[index];
        let row = &mut self.rows[index];
        row.sends += 1;
        match send(&self.conn.js, msg).await {
            Ok(ack) => self.in_flight.push(AckWait { index, send: row.sends, ack: std::future::IntoFuture::into_future(ack) }),
            Err(e) => self.finish(index, Err(map_error(&msg.subject, e))),
        }
    }

    /// Takes the outcome of one send of a row.
    async fn settle(&mut self, index: usize, send: u32, outcome: std::result::Result<PublishAck, PublishError>) {
        if self.results[index].is_some() {
            return; // decided already: acked by another send, denied, or out of time
        }
        let subject = self.msgs[index].subject.as_str();
        match outcome {
            Ok(ack) => self.finish(index, Ok(ack.into())),
            Err(_) if send != self.rows[index].sends => {}
            Err(e) if is_no_responders(&e) => {
                self.rows[index].no_leader = true;
                if !self.stream_may_exist(index).await {
                    return self.finish(index, Err(map_error(subject, e)));
                }
                self.park(index);
            }
            Err(e) if is_in_process(&e) => self.park(index),
            Err(e) => self.finish(index, Err(map_error(subject, e))),
        }
    }

    /// Sends the row again after the batch's current pause.
    fn park(&mut self, index: usize) {
        self.parked.push(index);
        if self.resume_at.is_none() {
            self.resume_at = Some(Instant::now() + self.pause.next());
        }
    }

    /// Whether a stream may capture the row's subject, asked once per subject.
    async fn stream_may_exist(&mut self, index: usize) -> bool {
        let subject = &self.msgs[index].subject;
        if let Some((_, may)) = self.probed.iter().find(|(s, _)| s == subject) {
            return *may;
        }
        let may = stream_may_exist(self.conn, subject, self.rows[index].deadline).await;
        self.probed.push((subject.clone(), may));
        may
    }

    /// Fails every waiting row whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        for index in self.oldest..self.rows.len() {
            if self.rows[index].deadline > now {
                break; // rows are sent in order: later ones have later deadlines
            }
            if self.results[index].is_none() {
                let error = unacknowledged(&self.msgs[index].subject, self.rows[index].no_leader);
                self.finish(index, Err(error));
            }
        }
    }

    fn finish(&mut self, index: usize, result: Result<Ack>) {
        self.results[index] = Some(result);
        self.waiting -= 1;
    }

    /// Takes the denials that arrived already, without waiting.
    fn note_denials(&mut self) {
        while let Ok(message) = self.denials.denials.try_recv() {
            self.deny(message);
        }
    }

    /// Fails, at once, every waiting row for a subject the denial names; rows not sent
    /// yet fail as the send loop reaches them.
    fn deny(&mut self, message: String) {
        let Some(subject) = crate::wire::events::denied_subject(&message) else { return };
        if self.denials.denied.iter().any(|(s, _)| s == subject) || !self.msgs.iter().any(|m| m.subject == subject) {
            return; // known already, or about another publisher's subject
        }
        let subject = subject.to_string();
        for index in 0..self.rows.len() {
            if self.results[index].is_none() && self.msgs[index].subject == subject {
                self.finish(index, Err(denied(&subject, &message)));
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

/// The error of a publish not acknowledged within request_timeout.
fn unacknowledged(subject: &str, no_leader: bool) -> BridgeError {
    if no_leader {
        BridgeError::new(
            Kind::StreamUnavailable,
            format!("publish to {subject:?} was not acknowledged in time: its stream had no leader (an election?); publish again"),
        )
    } else {
        BridgeError::new(Kind::PublishTimeout, format!("publish to {subject:?} was not acknowledged in time (is NATS reachable?)"))
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
        PublishErrorKind::TimedOut => unacknowledged(subject, false),
        PublishErrorKind::MaxPayloadExceeded => {
            BridgeError::new(Kind::PayloadTooLarge, format!("publish to {subject:?} refused: {e}"))
        }
        PublishErrorKind::BrokenPipe => {
            BridgeError::new(Kind::Connection, format!("publish to {subject:?} failed: connection lost"))
        }
        _ => BridgeError::new(Kind::Publish, format!("publish to {subject:?} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(err_code: u64) -> PublishError {
        let error: jetstream::Error =
            serde_json::from_value(serde_json::json!({ "code": 409, "err_code": err_code, "description": "x" })).unwrap();
        PublishError::with_source(PublishErrorKind::Other, error)
    }

    #[test]
    fn a_copy_still_being_stored_is_sent_again_other_refusals_are_not() {
        assert!(is_in_process(&api_error(MSG_ID_IN_PROCESS)));
        assert!(!is_in_process(&api_error(10071))); // wrong last sequence
        assert!(!is_in_process(&PublishError::new(PublishErrorKind::TimedOut)));
    }
}
