//! The pull loop: a tokio task fetches (bounded prefetch), decodes JSON and keeps
//! unsettled messages alive with progress acks; Ruby threads take batches, run handlers
//! and settle messages by id. Ruby is never called from here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, Notify};

use crate::connection::Connection;
use crate::errors::{BridgeError, Kind, Result};
use crate::provision_consumer::{ensure_consumer, ConsumerSpec};
use crate::topology::{ensure_stream, StreamSpec};

/// One delivered message, decoded outside the GVL.
#[derive(Debug)]
pub struct Delivery {
    pub id: u64,
    pub subject: String,
    pub deliveries: u64,
    pub stream_seq: u64,
    pub headers: Vec<(String, String)>,
    /// The parsed body, or why it is not an event envelope.
    pub event: std::result::Result<Value, String>,
}

/// What the bridge must still settle for a delivered message.
struct Unsettled {
    reply: Subject,
    subject: String,
    body: Bytes,
    headers: Option<HeaderMap>,
    deliveries: u64,
    stream_seq: u64,
    last_progress: Instant,
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
}

pub struct PullLoop {
    conn: Arc<Connection>,
    spec: LoopSpec,
    unsettled: Arc<Mutex<HashMap<u64, Unsettled>>>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    stopping: Arc<AtomicBool>,
    stop_signal: Arc<Notify>,
    /// Wakes a Ruby thread waiting for a batch (stop!, from a signal handler).
    wake: Arc<Notify>,
}

impl PullLoop {
    /// Provisions the durable and starts the fetch and keepalive tasks.
    pub async fn start(conn: Arc<Connection>, spec: LoopSpec) -> Result<Arc<PullLoop>> {
        provision(&conn, &spec).await?;
        let (tx, rx) = mpsc::channel(spec.batch_size.max(1));
        let this = Arc::new(PullLoop {
            conn,
            spec,
            unsettled: Arc::new(Mutex::new(HashMap::new())),
            rx: tokio::sync::Mutex::new(rx),
            stopping: Arc::new(AtomicBool::new(false)),
            stop_signal: Arc::new(Notify::new()),
            wake: Arc::new(Notify::new()),
        });
        tokio::spawn(this.clone().pump(tx));
        tokio::spawn(this.clone().keepalive());
        Ok(this)
    }

    fn log(&self, level: &'static str, kind: &str, message: String) {
        self.conn.events.push(level, kind, &message);
    }

    /// Fetches forever: re-provisions after the consumer or stream is deleted, and
    /// resumes after reconnects. The bounded channel is the prefetch limit.
    async fn pump(self: Arc<Self>, tx: mpsc::Sender<Delivery>) {
        let next_id = AtomicU64::new(1);
        let mut failures: u32 = 0;
        while !self.stopping.load(Ordering::Acquire) {
            let messages = match self.open_stream().await {
                Ok(m) => m,
                Err(e) => {
                    failures += 1;
                    self.log("error", "consumer_error", format!("consumer {} unavailable: {e}", self.spec.consumer.durable));
                    if self.pause(failures).await {
                        break;
                    }
                    continue;
                }
            };
            tokio::pin!(messages);
            loop {
                let item = tokio::select! {
                    item = messages.next() => item,
                    _ = self.stop_signal.notified() => return,
                };
                let Some(item) = item else { break };
                match item {
                    Ok(message) => {
                        failures = 0;
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let delivery = self.admit(id, message);
                        tokio::select! {
                            sent = tx.send(delivery) => if sent.is_err() { return },
                            _ = self.stop_signal.notified() => { self.release(id); return }
                        }
                        self.wake.notify_one();
                    }
                    Err(e) => {
                        use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                        let kind = e.kind();
                        self.log("warn", "consumer_error", format!("pull from {} failed: {e}", self.spec.consumer.durable));
                        if matches!(kind, K::ConsumerDeleted | K::NoResponders | K::Pull | K::RequestLimitExceeded) {
                            failures += 1;
                            if self.pause(failures).await {
                                return;
                            }
                            break; // re-provision and pull anew
                        }
                    }
                }
            }
        }
    }

    /// Sleeps a growing delay (max 5 s); true when stopping meanwhile.
    async fn pause(&self, failures: u32) -> bool {
        let delay = Duration::from_millis((100u64 << failures.min(6)).min(5_000));
        tokio::select! {
            _ = tokio::time::sleep(delay) => self.stopping.load(Ordering::Acquire),
            _ = self.stop_signal.notified() => true,
        }
    }

    async fn open_stream(&self) -> Result<pull::Stream> {
        provision(&self.conn, &self.spec).await?;
        let consumer: jetstream::consumer::PullConsumer = self
            .conn
            .js
            .get_consumer_from_stream(&self.spec.consumer.durable, &self.spec.consumer.stream)
            .await
            .map_err(|e| BridgeError::new(Kind::Consumer, format!("consumer lookup failed: {e}")))?;
        consumer
            .stream()
            .max_messages_per_batch(self.spec.batch_size.max(1))
            .expires(Duration::from_secs(5))
            .heartbeat(Duration::from_millis(2_500))
            .messages()
            .await
            .map_err(|e| BridgeError::new(Kind::Consumer, format!("pull subscription failed: {e}")))
    }

    /// Records the message as unsettled and decodes it for Ruby.
    fn admit(&self, id: u64, message: jetstream::Message) -> Delivery {
        let (deliveries, stream_seq) = message
            .info()
            .map(|i| (i.delivered.max(1) as u64, i.stream_sequence))
            .unwrap_or((1, 0));
        let headers: Vec<(String, String)> = message
            .headers
            .as_ref()
            .map(|h| h.iter().map(|(k, v)| (k.to_string(), v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(","))).collect())
            .unwrap_or_default();
        let event = decode(&message.payload);
        let subject = message.subject.to_string();
        if let Some(reply) = message.reply.clone() {
            self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).insert(
                id,
                Unsettled {
                    reply,
                    subject: subject.clone(),
                    body: message.payload.clone(),
                    headers: message.headers.clone(),
                    deliveries,
                    stream_seq,
                    last_progress: Instant::now(),
                },
            );
        }
        Delivery { id, subject, deliveries, stream_seq, headers, event }
    }

    /// Sends progress acks for messages still unsettled after a third of ack_wait, so a
    /// slow handler (or a message waiting behind one) is not redelivered elsewhere.
    async fn keepalive(self: Arc<Self>) {
        let interval = (self.spec.consumer.ack_wait / 3).max(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval / 2) => {}
                _ = self.stop_signal.notified() => return,
            }
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let due: Vec<Subject> = {
                let mut map = self.unsettled.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                map.values_mut()
                    .filter(|u| now.duration_since(u.last_progress) >= interval)
                    .map(|u| {
                        u.last_progress = now;
                        u.reply.clone()
                    })
                    .collect()
            };
            for reply in due {
                let _ = self.conn.client.publish(reply, Bytes::from_static(b"+WPI")).await;
            }
        }
    }

    /// Waits up to `wait` for the first message, then takes what else is ready (up to `max`).
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Vec<Delivery> {
        let mut rx = self.rx.lock().await;
        let mut batch = Vec::new();
        if self.stopping.load(Ordering::Acquire) {
            return batch;
        }
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep(wait) => None,
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
        batch
    }

    async fn wake_on_stop(&self) {
        while !self.stopping.load(Ordering::Acquire) {
            self.wake.notified().await;
        }
    }

    /// Settles a message without waiting (the ack is queued on the connection).
    /// Returns false when the id is unknown (already settled).
    pub fn settle(&self, id: u64, how: Settle) -> bool {
        let Some(u) = self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) else {
            return false;
        };
        let payload: Bytes = match how {
            Settle::Ack => Bytes::from_static(b"+ACK"),
            Settle::Nak(None) => Bytes::from_static(b"-NAK"),
            // The delay is nanoseconds on the wire.
            Settle::Nak(Some(d)) => format!("-NAK {{\"delay\":{}}}", d.as_nanos()).into(),
            Settle::Term => Bytes::from_static(b"+TERM"),
        };
        let client = self.conn.client.clone();
        // Called from Ruby threads too: spawn on the process runtime, not the ambient one.
        crate::runtime::get().spawn(async move { client.publish(u.reply, payload).await });
        true
    }

    fn release(&self, id: u64) {
        self.settle(id, Settle::Nak(None));
    }

    /// Publishes the message to the DLQ with its original body and headers plus the
    /// reasons, waits for that ack, and only then terminates the original. On failure
    /// the original stays unsettled (the caller naks it) and nothing is lost.
    pub async fn dead_letter(&self, id: u64, reason: &str, error_class: &str, error_message: &str) -> Result<()> {
        let dlq = self
            .spec
            .dlq_subject
            .clone()
            .ok_or_else(|| BridgeError::new(Kind::Consumer, "use_dlq is off"))?;
        let (subject, body, mut headers, deliveries, stream_seq) = {
            let map = self.unsettled.lock().unwrap_or_else(|p| p.into_inner());
            let u = map
                .get(&id)
                .ok_or_else(|| BridgeError::new(Kind::Consumer, format!("message {id} is already settled")))?;
            (u.subject.clone(), u.body.clone(), u.headers.clone().unwrap_or_default(), u.deliveries, u.stream_seq)
        };
        let original_id = headers.get("Nats-Msg-Id").or_else(|| headers.get("nats-msg-id")).map(|v| v.to_string());
        // A fresh Nats-Msg-Id per original message: reusing the original's made the
        // server drop the DLQ copy as a duplicate (and the message was lost).
        let stream = &self.spec.consumer.stream;
        headers.insert("Nats-Msg-Id", format!("dlq:{stream}:{stream_seq}").as_str());
        if let Some(original) = original_id {
            headers.insert("X-Original-Msg-Id", original.as_str());
        }
        headers.insert("X-Dead-Letter-Reason", reason);
        headers.insert("X-Error-Class", error_class);
        headers.insert("X-Error-Message", sanitize_header(error_message).as_str());
        headers.insert("X-Deliveries", deliveries.to_string().as_str());
        headers.insert("X-Original-Subject", subject.as_str());
        headers.insert("X-Stream-Seq", stream_seq.to_string().as_str());
        headers.insert("X-Consumer", self.spec.consumer.durable.as_str());
        headers.insert("X-Failed-At", crate::envelope::now_iso8601().as_str());
        let ack = self
            .conn
            .js
            .publish_with_headers(dlq.clone(), headers, body)
            .await
            .map_err(|e| dlq_error(&dlq, &e.to_string()))?;
        ack.await.map_err(|e| dlq_error(&dlq, &e.to_string()))?;
        self.settle(id, Settle::Term);
        Ok(())
    }

    /// Stops fetching, returns every prefetched (not yet handed out) message to the server
    /// at once, and flushes queued acks.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop_signal.notify_waiters();
        self.wake.notify_waiters();
        let mut rx = self.rx.lock().await;
        rx.close();
        while let Ok(d) = rx.try_recv() {
            self.release(d.id);
        }
        drop(rx);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.client.flush()).await;
    }

    /// Marks the loop as stopping and wakes a waiting `next_batch`; never blocks, so it
    /// is safe from a signal handler.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop_signal.notify_waiters();
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    pub fn unsettled_count(&self) -> usize {
        self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

async fn provision(conn: &Connection, spec: &LoopSpec) -> Result<()> {
    let report = match ensure_consumer(&conn.js, &spec.consumer).await {
        Err(e) if e.code == Some(404) && spec.stream.is_some() => {
            let stream = spec.stream.as_ref().expect("checked above");
            let r = ensure_stream(&conn.js, stream).await?;
            conn.events.push("warn", "stream_provisioned", &format!("stream {} was missing: {}", r.stream, r.action));
            ensure_consumer(&conn.js, &spec.consumer).await?
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

/// Parses the body as an event envelope (a JSON object).
fn decode(body: &[u8]) -> std::result::Result<Value, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("body is JSON but not an event envelope (expected an object)".into()),
        Err(e) => Err(format!("body is not valid JSON: {e}")),
    }
}

/// Header values must be one line of visible text.
fn sanitize_header(text: &str) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    one_line.chars().take(1024).collect()
}

fn dlq_error(subject: &str, detail: &str) -> BridgeError {
    BridgeError::new(Kind::DlqRouting, format!("dead-letter publish to {subject:?} failed: {detail}"))
}
