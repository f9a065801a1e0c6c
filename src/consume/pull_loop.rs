//! The pull loop: a tokio task fetches (one batch ahead), decodes JSON and keeps
//! unsettled messages alive with progress acks; Ruby threads take batches, run handlers
//! and settle messages by id. Ruby is never called from here.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::consume::fetch::{provision, Position, Prefetch, PULL_EXPIRES};
use crate::consume::settle::Settlement;
use crate::errors::{BridgeError, Kind, Result};
use crate::topology::durable::ConsumerSpec;
use crate::topology::stream::StreamSpec;
use crate::wire::connection::Connection;

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
    /// With provision off: check the durable exists (CONSUMER.INFO)? False: no API call
    /// at all (verify_topology off), and no search for unreadable messages.
    pub verify: bool,
    /// How long a handler may run before it counts as stuck: its message is no longer
    /// kept alive (see settle.rs).
    pub max_handler_time: Duration,
    /// Ruby threads running handlers for this loop: waiting messages are given back only
    /// when every one of them is overdue.
    pub concurrency: usize,
}

pub struct PullLoop {
    pub(super) conn: Arc<Connection>,
    pub(super) spec: LoopSpec,
    /// Fetching (fetch.rs).
    pub(super) prefetch: Prefetch,
    pub(super) position: Position,
    /// Settlement (settle.rs).
    pub(super) settlement: Settlement,
    /// Set once by stop; a watch channel so no task can miss it.
    stop: watch::Sender<bool>,
    /// Wakes a Ruby thread waiting for a batch (stop!, from a signal handler).
    pub(super) wake: Notify,
    fetcher: Mutex<Option<JoinHandle<()>>>,
    /// The runtime the loop's tasks run on (settlements are sent from Ruby threads too).
    pub(super) runtime: tokio::runtime::Handle,
    /// Why the loop cannot go on: a task of it panicked. next_batch raises it, so run!
    /// ends with an error instead of waiting on a fetch task that is gone.
    broken: Mutex<Option<String>>,
}

impl PullLoop {
    /// Provisions the durable and starts the fetch and keepalive tasks.
    pub async fn start(conn: Arc<Connection>, spec: LoopSpec) -> Result<Arc<PullLoop>> {
        provision(&conn, &spec, None).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::new(PullLoop {
            conn,
            spec,
            prefetch: Prefetch::new(rx),
            position: Position::default(),
            settlement: Settlement::default(),
            stop: watch::channel(false).0,
            wake: Notify::new(),
            fetcher: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
            broken: Mutex::new(None),
        });
        let fetcher = tokio::spawn(this.clone().guarded("fetch", this.clone().fetch_loop(tx)));
        *crate::sync::lock(&this.fetcher) = Some(fetcher);
        tokio::spawn(this.clone().guarded("keepalive", this.clone().keepalive()));
        Ok(this)
    }

    /// Runs one of the loop's tasks; a panic in it breaks the loop (see `broken`) and
    /// wakes the Ruby thread waiting for a batch, rather than vanishing with the task.
    async fn guarded(self: Arc<Self>, task: &'static str, work: impl std::future::Future<Output = ()>) {
        if let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await {
            let what = crate::errors::panic_message(&*panic);
            *crate::sync::lock(&self.broken) = Some(format!("the consumer's {task} task failed (internal error: {what})"));
            self.log("error", "consumer_error", format!("consumer {}: its {task} task failed: {what}", self.spec.consumer.durable));
            self.request_stop();
        }
    }

    fn check_broken(&self) -> Result<()> {
        match crate::sync::lock(&self.broken).clone() {
            Some(why) => Err(BridgeError::new(Kind::Consumer, why)),
            None => Ok(()),
        }
    }

    pub(super) fn log(&self, level: &'static str, kind: &str, message: String) {
        self.conn.events.push(level, kind, &message);
    }

    pub(super) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    pub(super) async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Waits up to `wait` for the first message, then takes what else is ready (up to `max`).
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.check_broken()?;
        self.flush_settled();
        let mut rx = self.prefetch.rx.lock().await;
        let mut batch = Vec::new();
        if self.stopping() {
            return Ok(batch);
        }
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep(wait) => None,
            _ = self.stopped() => None,
            _ = self.wake_on_stop() => None,
        };
        let Some(first) = first else {
            self.check_broken()?; // woken because a task failed
            return Ok(batch);
        };
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        self.prefetch.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        self.prefetch.taken.notify_one(); // the fetch task may be waiting for room to pull again
        // Messages given back while queued (give_back_waiting) belong to another worker now.
        let map = crate::sync::lock(&self.settlement.unsettled);
        batch.retain(|d| map.contains_key(&d.id));
        Ok(batch)
    }

    async fn wake_on_stop(&self) {
        while !self.stopping() {
            self.wake.notified().await;
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
        let mut rx = self.prefetch.rx.lock().await;
        rx.close();
        while let Ok(d) = rx.try_recv() {
            self.release(d.id);
        }
        drop(rx);
        // Inline, not spawned: these must be queued on the connection before the flush.
        let queued = std::mem::take(&mut *crate::sync::lock(&self.settlement.settled));
        for (reply, payload) in queued {
            let _ = self.conn.client.publish(reply, payload).await;
        }
        // Without a connection the flush would wait for one: the settlements stay queued
        // for the reconnect, and what they do not reach is redelivered after ack_wait.
        if self.conn.is_connected() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.client.flush()).await;
        }
    }

    /// Marks the loop as stopping and wakes a waiting `next_batch`; never blocks, so it
    /// is safe from a signal handler.
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}
