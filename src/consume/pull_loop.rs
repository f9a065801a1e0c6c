//! The pull loop: a tokio task fetches (one batch ahead), decodes JSON and keeps
//! unsettled messages alive with progress acks; Ruby threads take batches, run handlers
//! and settle messages by id. Ruby is never called from here.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::wire::connection::Connection;
use crate::errors::{BridgeError, Kind, Result};
use crate::topology::durable::{ensure_consumer, ConsumerSpec};
use crate::topology::stream::{ensure_stream, StreamSpec};
use crate::consume::dead_letter::{self, Failure};
use crate::consume::unreadable;

/// One delivered message (its body is parsed into Ruby objects by the Ruby thread that
/// takes it: ruby/from_json.rs).
#[derive(Debug)]
pub struct Delivery {
    pub id: u64,
    pub subject: Subject,
    pub deliveries: u64,
    pub stream_seq: u64,
    /// The Nats-Msg-Id header (read in either spelling), the publisher's event id.
    pub msg_id: Option<String>,
    pub body: Bytes,
}

/// What the bridge must still settle for a delivered message (the message itself is
/// kept, moved not copied, for the DLQ).
struct Unsettled {
    message: async_nats::Message,
    deliveries: u64,
    stream_seq: u64,
    last_progress: Instant,
    /// Handed to the handler (Ruby claimed it): kept alive however long it takes. The
    /// others are waiting behind it, and are given back when it outlasts ack_wait.
    claimed: bool,
}

/// How a message is settled.
#[derive(Debug, Clone, Copy)]
pub enum Settle {
    Ack,
    Nak(Option<Duration>),
    Term,
}

/// Everything the loop needs, fixed when the consumer is built.
#[derive(Debug, Clone)]
pub struct LoopSpec {
    pub consumer: ConsumerSpec,
    /// Re-provisioned when it disappears (None when an operator owns the stream).
    pub stream: Option<StreamSpec>,
    pub batch_size: usize,
    pub dlq_subject: Option<String>,
    /// Create/update the durable; when false (an operator owns it) only check it exists.
    pub provision: bool,
}

pub struct PullLoop {
    conn: Arc<Connection>,
    spec: LoopSpec,
    unsettled: Arc<Mutex<HashMap<u64, Unsettled>>>,
    /// Acks/naks/terms queued by Ruby threads, sent together by `flush_settled` (one task
    /// and one wake-up per batch instead of one per message).
    settled: Mutex<Vec<(Subject, Bytes)>>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>,
    /// Delivered but not yet handed to Ruby, and asked for by pulls in flight but not yet
    /// delivered: together they bound prefetch.
    queued: AtomicUsize,
    requested: AtomicUsize,
    /// Wakes the fetch task when Ruby has taken the queued messages.
    taken: Notify,
    /// Set once by stop; a watch channel so no task can miss it.
    stop: watch::Sender<bool>,
    /// Wakes a Ruby thread waiting for a batch (stop!, from a signal handler).
    wake: Notify,
    fetcher: Mutex<Option<JoinHandle<()>>>,
    /// Highest stream sequence delivered, and those delivered but not yet acked or
    /// terminated (NAKed ones come back): a deleted durable is recreated from the lowest
    /// outstanding one, or after the highest, so nothing is skipped or replayed.
    last_seq: AtomicU64,
    outstanding: Mutex<BTreeSet<u64>>,
    /// The message whose handler runs now, and since when (None between messages).
    current: Mutex<Option<(u64, Instant)>>,
    /// Set while the current handler has outlasted ack_wait: its waiting messages have
    /// been given back, and no more are pulled until it returns.
    overdue: AtomicBool,
}

/// Prefetch bound, in batches (queued for Ruby plus requested, beyond the batch Ruby
/// works through): one keeps the next batch on its way, and a worker never holds more
/// than two batches (the README's "batch_size is the prefetch bound").
const PREFETCH_BATCHES: usize = 1;

/// How long one pull request waits on the server for messages. It also bounds how long
/// stop waits for a request in flight (whose late arrivals are given back).
const PULL_EXPIRES: Duration = Duration::from_secs(1);

impl PullLoop {
    /// Provisions the durable and starts the fetch and keepalive tasks.
    pub async fn start(conn: Arc<Connection>, spec: LoopSpec) -> Result<Arc<PullLoop>> {
        provision(&conn, &spec, None).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::new(PullLoop {
            conn,
            spec,
            unsettled: Arc::new(Mutex::new(HashMap::new())),
            settled: Mutex::new(Vec::new()),
            rx: tokio::sync::Mutex::new(rx),
            queued: AtomicUsize::new(0),
            requested: AtomicUsize::new(0),
            taken: Notify::new(),
            stop: watch::channel(false).0,
            wake: Notify::new(),
            fetcher: Mutex::new(None),
            last_seq: AtomicU64::new(0),
            outstanding: Mutex::new(BTreeSet::new()),
            current: Mutex::new(None),
            overdue: AtomicBool::new(false),
        });
        let fetcher = tokio::spawn(this.clone().fetch_loop(tx));
        *crate::sync::lock(&this.fetcher) = Some(fetcher);
        tokio::spawn(this.clone().keepalive());
        Ok(this)
    }

    fn log(&self, level: &'static str, kind: &str, message: String) {
        self.conn.events.push(level, kind, &message);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// The fetch task: binds the durable (provisioning it, or checking it exists), pulls
    /// until stopped, and after a failure (a lost connection, a deleted durable or
    /// stream) pauses, looks for unreadable messages and binds again, resuming where it
    /// was.
    async fn fetch_loop(self: Arc<Self>, tx: mpsc::UnboundedSender<Delivery>) {
        let next_id = AtomicU64::new(1);
        let mut failures: u32 = 0;
        // Set when a pull is cut short: a message async-nats could not read may be why.
        let mut look_for_unreadable = false;
        loop {
            if self.stopping() {
                return;
            }
            if let Err(e) = self.bind().await {
                failures += 1;
                self.log("error", "consumer_error", format!("consumer {} unavailable: {e}", self.spec.consumer.durable));
                if self.pause(failures).await {
                    return;
                }
                continue;
            }
            if std::mem::take(&mut look_for_unreadable) {
                self.dead_letter_unreadable().await;
            }
            match self.pull(&next_id, &tx, &mut failures).await {
                Ok(()) => return, // stopped
                Err(e) => {
                    failures += 1;
                    self.log("warn", "consumer_error", format!("pull from {} failed: {e}", self.spec.consumer.durable));
                    look_for_unreadable = true;
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
    async fn pull(&self, next_id: &AtomicU64, tx: &mpsc::UnboundedSender<Delivery>, failures: &mut u32) -> std::result::Result<(), String> {
        let batch = self.spec.batch_size.max(1);
        let client = &self.conn.client;
        let inbox = client.new_inbox();
        let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
        let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", self.spec.consumer.stream, self.spec.consumer.durable);
        let request = Bytes::from(format!("{{\"batch\":{batch},\"expires\":{}}}", PULL_EXPIRES.as_nanos()));
        let mut disconnects = self.conn.disconnects.subscribe();
        // The server answers every request within PULL_EXPIRES; silence means a lost connection.
        let mut last_heard = tokio::time::Instant::now();
        let result = 'pull: loop {
            let stopping = self.stopping();
            let holding_back = self.overdue.load(Ordering::Acquire);
            while !stopping && !holding_back && self.queued.load(Ordering::Acquire) + self.requested.load(Ordering::Acquire) + batch <= PREFETCH_BATCHES * batch {
                self.requested.fetch_add(batch, Ordering::AcqRel);
                if let Err(e) = client.publish_with_reply(next_subject.clone(), inbox.clone(), request.clone()).await {
                    break 'pull Err(format!("pull request failed: {e}"));
                }
            }
            let waiting_for_answers = self.requested.load(Ordering::Acquire) > 0;
            if stopping && !waiting_for_answers {
                break Ok(());
            }
            tokio::select! {
                answer = answers.next() => {
                    let Some(message) = answer else { break Err("the pull subscription was closed".into()) };
                    last_heard = tokio::time::Instant::now();
                    *failures = 0;
                    if let Err(e) = self.receive(message, next_id, tx) {
                        break Err(e);
                    }
                }
                _ = self.taken.notified() => {} // room for another request, perhaps
                _ = disconnects.changed() => break Err("the connection was lost during the pull".into()),
                _ = tokio::time::sleep_until(last_heard + PULL_EXPIRES + Duration::from_secs(2)), if waiting_for_answers => {
                    break Err("pull requests got no answer (connection lost?)".into());
                }
                _ = self.stopped(), if !stopping => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        let _ = answers.unsubscribe().await;
        // What was still requested died with these requests (or will answer a closed inbox).
        self.requested.store(0, Ordering::Release);
        result
    }

    /// One answer to a pull request: a message (tracked and queued for Ruby, or given
    /// back when stopping) or a status that ends requests (their unfilled count is no
    /// longer requested). Err for a status that needs the durable bound again.
    fn receive(&self, message: async_nats::Message, next_id: &AtomicU64, tx: &mpsc::UnboundedSender<Delivery>) -> std::result::Result<(), String> {
        if let Some(status) = message.status {
            let unfilled = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Pending-Messages"))
                .and_then(|v| v.as_str().parse::<usize>().ok());
            if let Some(n) = unfilled {
                let _ = self.requested.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(n)));
            }
            return match (status.as_u16(), unfilled) {
                // Request expired (408) or found nothing (404), or a heartbeat (100).
                (408 | 404, Some(_)) | (100, _) => Ok(()),
                (code, _) => Err(format!(
                    "the server ended the pull: {code} {}",
                    message.description.as_deref().unwrap_or("")
                )),
            };
        }
        let _ = self.requested.fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(1)));
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let message = jetstream::Message { message, context: self.conn.js.clone() };
        // A message without a reply subject cannot be acked: nothing to hand out.
        let Some(delivery) = self.admit(id, message) else { return Ok(()) };
        if self.stopping() {
            self.release(id);
            return Ok(());
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if tx.send(delivery).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.release(id);
            return Ok(());
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Provisions the durable (or checks it exists), recreating a deleted one where this
    /// consumer was, so nothing is skipped or replayed.
    async fn bind(&self) -> Result<()> {
        let lowest_outstanding = crate::sync::lock(&self.outstanding).first().copied();
        let resume_at = match (lowest_outstanding, self.last_seq.load(Ordering::Acquire)) {
            (Some(seq), _) => Some(seq),
            (None, 0) => None,
            (None, last) => Some(last + 1),
        };
        provision(&self.conn, &self.spec, resume_at).await
    }

    /// Sleeps a growing delay (max 5 s); true when stopping meanwhile.
    async fn pause(&self, failures: u32) -> bool {
        let delay = Duration::from_millis((100u64 << failures.min(6)).min(5_000));
        tokio::select! {
            _ = tokio::time::sleep(delay) => self.stopping(),
            _ = self.stopped() => true,
        }
    }

    /// Records the message as unsettled and queues it for Ruby.
    fn admit(&self, id: u64, message: jetstream::Message) -> Option<Delivery> {
        let (deliveries, stream_seq) = message
            .info()
            .map(|i| (i.delivered.max(1) as u64, i.stream_sequence))
            .unwrap_or((1, 0));
        let message = message.message; // keeps the reply subject (split() would move it out)
        message.reply.as_ref()?;
        self.last_seq.fetch_max(stream_seq, Ordering::AcqRel);
        crate::sync::lock(&self.outstanding).insert(stream_seq);
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
        crate::sync::lock(&self.unsettled).insert(id, unsettled);
        Some(delivery)
    }

    /// Sends progress acks for messages still unsettled after a third of ack_wait, so a
    /// slow handler (or a message waiting behind one) is not redelivered elsewhere. When
    /// the handler has outlasted ack_wait (hung, perhaps), only its own messages are kept:
    /// those waiting behind it are given back for another worker (give_back_waiting).
    async fn keepalive(self: Arc<Self>) {
        let ack_wait = self.spec.consumer.ack_wait;
        let interval = (ack_wait / 3).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval / 2) => {}
                _ = self.stopped() => return,
            }
            let handler_overdue = crate::sync::lock(&self.current).is_some_and(|(_, since)| since.elapsed() >= ack_wait);
            if handler_overdue && !self.overdue.swap(true, Ordering::AcqRel) {
                self.give_back_waiting();
            }
            // Acks of a handler that is slow to come back for the next batch go out here.
            self.flush_settled();
            let due: Vec<Subject> = {
                let mut map = crate::sync::lock(&self.unsettled);
                let now = Instant::now();
                map.values_mut()
                    .filter(|u| now.duration_since(u.last_progress) >= interval)
                    .filter_map(|u| {
                        u.last_progress = now;
                        u.message.reply.clone()
                    })
                    .collect()
            };
            for reply in due {
                let _ = self.conn.client.publish(reply, Bytes::from_static(b"+WPI")).await;
            }
        }
    }

    /// NAKs (no delay) every message not handed to the handler yet: those in Ruby's batch
    /// behind the one in hand (Ruby skips them, `claim` says they are gone) and those
    /// prefetched. A hung handler then holds one message, not two batches.
    fn give_back_waiting(&self) {
        let waiting: Vec<u64> = {
            let map = crate::sync::lock(&self.unsettled);
            map.iter().filter(|(_, u)| !u.claimed).map(|(id, _)| *id).collect()
        };
        for id in &waiting {
            self.release(*id);
        }
        let current = *crate::sync::lock(&self.current);
        if let Some((id, since)) = current {
            self.log(
                "warn",
                "handler_overdue",
                format!(
                    "handler on {} has been running for {:.1}s (longer than ack_wait, message {id}): {} waiting message(s) given back to the server, no more fetched until it returns",
                    self.spec.consumer.filter_subject,
                    since.elapsed().as_secs_f64(),
                    waiting.len()
                ),
            );
        }
    }

    /// Ruby is about to run the handler for this message: it becomes the one in hand.
    /// False when it was given back meanwhile (the handler must not run: another worker
    /// has it now).
    pub fn claim(&self, id: u64) -> bool {
        let mut map = crate::sync::lock(&self.unsettled);
        let Some(u) = map.get_mut(&id) else { return false };
        u.claimed = true;
        drop(map);
        *crate::sync::lock(&self.current) = Some((id, Instant::now()));
        true
    }

    /// No handler runs now (Ruby is between messages or batches): nothing is overdue.
    fn handler_returned(&self) {
        *crate::sync::lock(&self.current) = None;
        if self.overdue.swap(false, Ordering::AcqRel) {
            self.taken.notify_one(); // the fetch task may pull again
        }
    }

    /// Waits up to `wait` for the first message, then takes what else is ready (up to `max`).
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Vec<Delivery> {
        self.handler_returned();
        self.flush_settled();
        let mut rx = self.rx.lock().await;
        let mut batch = Vec::new();
        if self.stopping() {
            return batch;
        }
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep(wait) => None,
            _ = self.stopped() => None,
            _ = self.wake_on_stop() => None,
        };
        let Some(first) = first else { return batch };
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        self.taken.notify_one(); // the fetch task may be waiting for room to pull again
        // Messages given back while queued (give_back_waiting) belong to another worker now.
        let map = crate::sync::lock(&self.unsettled);
        batch.retain(|d| map.contains_key(&d.id));
        batch
    }

    async fn wake_on_stop(&self) {
        while !self.stopping() {
            self.wake.notified().await;
        }
    }

    /// Queues the settlement of a message; it is sent with the next `flush_settled`
    /// (at the next batch, within a keepalive tick, or at stop). Returns false when the
    /// id is unknown (already settled).
    pub fn settle(&self, id: u64, how: Settle) -> bool {
        let Some(u) = crate::sync::lock(&self.unsettled).remove(&id) else {
            return false;
        };
        let payload: Bytes = match how {
            Settle::Ack => Bytes::from_static(b"+ACK"),
            Settle::Nak(None) => Bytes::from_static(b"-NAK"),
            // The delay is nanoseconds on the wire.
            Settle::Nak(Some(d)) => format!("-NAK {{\"delay\":{}}}", d.as_nanos()).into(),
            Settle::Term => Bytes::from_static(b"+TERM"),
        };
        if matches!(how, Settle::Ack | Settle::Term) {
            crate::sync::lock(&self.outstanding).remove(&u.stream_seq);
        }
        if crate::sync::lock(&self.current).is_some_and(|(current, _)| current == id) {
            self.handler_returned();
        }
        if let Some(reply) = u.message.reply {
            crate::sync::lock(&self.settled).push((reply, payload));
        }
        true
    }

    /// Sends every queued settlement from one task on the process runtime.
    pub fn flush_settled(&self) {
        let queued = std::mem::take(&mut *crate::sync::lock(&self.settled));
        if queued.is_empty() {
            return;
        }
        let client = self.conn.client.clone();
        // Called from Ruby threads too: spawn on the process runtime, not the ambient one.
        crate::runtime::get().spawn(async move {
            for (reply, payload) in queued {
                let _ = client.publish(reply, payload).await;
            }
        });
    }

    fn release(&self, id: u64) {
        self.settle(id, Settle::Nak(None));
    }

    /// Publishes the message to the DLQ with its original body and headers plus the
    /// reasons (dead_letter.rs), waits for that ack, and only then terminates the
    /// original. On failure the original stays unsettled (the caller naks it) and nothing
    /// is lost.
    pub async fn dead_letter(&self, id: u64, reason: &str, error_class: &str, error_message: &str) -> Result<()> {
        let dlq = self
            .spec
            .dlq_subject
            .clone()
            .ok_or_else(|| BridgeError::new(Kind::Consumer, "use_dlq is off"))?;
        let (subject, body, headers, deliveries, stream_seq) = {
            let map = crate::sync::lock(&self.unsettled);
            let u = map
                .get(&id)
                .ok_or_else(|| BridgeError::new(Kind::Consumer, format!("message {id} is already settled")))?;
            let m = &u.message;
            (m.subject.to_string(), m.payload.clone(), m.headers.clone(), u.deliveries, u.stream_seq)
        };
        let failure = Failure { subject: &subject, stream_seq, deliveries: Some(deliveries), reason, error_class, error_message };
        self.publish_dead_letter(&dlq, headers.as_ref(), body, failure).await?;
        self.settle(id, Settle::Term);
        self.flush_settled();
        Ok(())
    }

    /// Stores a copy on the DLQ subject with the failure described in X-* headers and
    /// waits for its ack.
    async fn publish_dead_letter(&self, dlq: &str, original: Option<&HeaderMap>, body: Bytes, failure: Failure<'_>) -> Result<()> {
        let max_payload = self.conn.client.max_payload();
        let headers = dead_letter::headers(original, &failure, &self.spec.consumer.stream, &self.spec.consumer.durable, body.len(), max_payload);
        let sent = if headers.is_empty() {
            self.conn.js.publish(dlq.to_string(), body).await
        } else {
            self.conn.js.publish_with_headers(dlq.to_string(), headers, body).await
        };
        let ack = sent.map_err(|e| dlq_error(dlq, &e.to_string()))?;
        ack.await.map_err(|e| dlq_error(dlq, &e.to_string()))?;
        Ok(())
    }

    /// Finds delivered messages whose headers async-nats cannot read (see unreadable.rs)
    /// and moves each to the DLQ: copy stored first, original deleted after. Failures
    /// are logged; the message then stays where it is and is looked at again next time.
    async fn dead_letter_unreadable(&self) {
        let spec = &self.spec.consumer;
        let held = crate::sync::lock(&self.outstanding).clone();
        let found = match unreadable::find(&self.conn, &spec.stream, &spec.durable, &spec.filter_subject, &held).await {
            Ok(found) => found,
            Err(e) => {
                self.log("warn", "consumer_error", format!("could not look for unreadable messages on {}: {e}", spec.durable));
                return;
            }
        };
        for message in found {
            let what = format!("message {} on {} (stream seq {})", message.subject, spec.stream, message.stream_seq);
            let Some(dlq) = self.spec.dlq_subject.clone() else {
                self.log("error", "unreadable_message", format!("{what} has unreadable headers ({}); use_dlq is off, so it stays in the stream and is redelivered until max_deliver", message.problem));
                continue;
            };
            let mut headers = HeaderMap::new();
            headers.insert("X-Original-Headers-Base64", unreadable::encode(&message.header_block).as_str());
            let error_message = format!("headers cannot be read: {}", message.problem);
            let failure = Failure {
                subject: &message.subject,
                stream_seq: message.stream_seq,
                deliveries: None,
                reason: "malformed",
                error_class: "JetstreamBridge::MalformedMessageError",
                error_message: &error_message,
            };
            let moved = match self.publish_dead_letter(&dlq, Some(&headers), Bytes::from(message.body), failure).await {
                Ok(()) => unreadable::delete(&self.conn, &spec.stream, message.stream_seq).await,
                Err(e) => Err(e),
            };
            match moved {
                Ok(()) => self.log("warn", "dead_lettered", format!("{what} moved to {dlq}: {error_message}")),
                Err(e) => self.log("error", "unreadable_message", format!("{what} has unreadable headers and could not be dead-lettered: {e}")),
            }
        }
    }

    /// Stops fetching (a pull in flight runs out, its late arrivals given back), returns
    /// every prefetched message not yet handed to Ruby to the server at once, and flushes
    /// queued acks.
    pub async fn stop(&self) {
        self.request_stop();
        let fetcher = crate::sync::lock(&self.fetcher).take();
        if let Some(fetcher) = fetcher {
            let _ = tokio::time::timeout(PULL_EXPIRES + Duration::from_secs(3), fetcher).await;
        }
        let mut rx = self.rx.lock().await;
        rx.close();
        while let Ok(d) = rx.try_recv() {
            self.release(d.id);
        }
        drop(rx);
        // Inline, not spawned: these must be queued on the connection before the flush.
        let queued = std::mem::take(&mut *crate::sync::lock(&self.settled));
        for (reply, payload) in queued {
            let _ = self.conn.client.publish(reply, payload).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.client.flush()).await;
    }

    /// Marks the loop as stopping and wakes a waiting `next_batch`; never blocks, so it
    /// is safe from a signal handler.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

}

/// Ensures the durable (and its stream when it is gone). `resume_at`: where a durable
/// that has disappeared is recreated from, so acked history is not replayed.
async fn provision(conn: &Connection, spec: &LoopSpec, resume_at: Option<u64>) -> Result<()> {
    if !spec.provision {
        return check_consumer(conn, &spec.consumer).await;
    }
    let report = match ensure_consumer(&conn.js, &spec.consumer, resume_at).await {
        Err(e) if e.code == Some(404) && spec.stream.is_some() => {
            let stream = spec.stream.as_ref().expect("checked above");
            let r = ensure_stream(&conn.js, stream).await?;
            conn.events.push("warn", "stream_provisioned", &format!("stream {} was missing: {}", r.stream, r.action));
            ensure_consumer(&conn.js, &spec.consumer, resume_at).await?
        }
        other => other?,
    };
    if report.action != "unchanged" {
        conn.events.push(
            "info",
            "consumer_provisioned",
            &if report.changes.is_empty() {
                format!("consumer {} {}", spec.consumer.durable, report.action)
            } else {
                format!("consumer {} {}: {}", spec.consumer.durable, report.action, report.changes.join(", "))
            },
        );
    }
    Ok(())
}

/// With provisioning off: the durable must exist; differences from the config are logged.
async fn check_consumer(conn: &Connection, spec: &ConsumerSpec) -> Result<()> {
    let subject = format!("CONSUMER.INFO.{}.{}", spec.stream, spec.durable);
    match crate::wire::api::request(&conn.js, &subject, &serde_json::json!({})).await {
        Ok(info) => {
            let (changes, _) = crate::topology::durable::diff(&info["config"], spec);
            if !changes.is_empty() {
                conn.events.push(
                    "warn",
                    "consumer_mismatch",
                    &format!("consumer {} differs from the config (auto_provision is off, left as is): {}", spec.durable, changes.join(", ")),
                );
            }
            Ok(())
        }
        Err(e) if crate::wire::api::is_not_found(&e) => Err(BridgeError::new(
            Kind::Topology,
            format!(
                "durable consumer {} does not exist on stream {} and auto_provision is off: create it (pull, explicit ack, filter_subject {}) or turn auto_provision on",
                spec.durable, spec.stream, spec.filter_subject
            ),
        )),
        Err(e) => Err(e),
    }
}

fn dlq_error(subject: &str, detail: &str) -> BridgeError {
    BridgeError::new(Kind::DlqRouting, format!("dead-letter publish to {subject:?} failed: {detail}"))
}
