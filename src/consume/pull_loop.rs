//! The pull loop: a tokio task fetches (one batch ahead), or takes a push durable's
//! deliveries, and unsettled messages are kept alive with progress acks; Ruby threads
//! take batches, run handlers and settle messages by id. Ruby is never called from here.
//! This file holds the loop's parts and its stop signal; what it does is in the files
//! that use it (see mod.rs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::consume::delivery::Delivery;
use crate::consume::position::Position;
use crate::consume::prefetch::Prefetch;
use crate::consume::unsettled::Settlement;
use crate::errors::{BridgeError, Kind, Result};
use crate::topology::durable::ConsumerSpec;
use crate::topology::ensure::Mode;
use crate::topology::stream::StreamSpec;
use crate::wire::connection::Connection;

/// Everything the loop needs, fixed when the consumer is built.
#[derive(Debug, Clone)]
pub struct LoopSpec {
    pub consumer: ConsumerSpec,
    /// Re-provisioned when it disappears (None when an operator owns the stream).
    pub stream: Option<StreamSpec>,
    pub batch_size: usize,
    pub dlq_subject: Option<String>,
    /// Provision the durable, only check it exists (an operator owns it), or neither
    /// (verify_topology off: no API call at all, and no search for unreadable messages).
    pub mode: Mode,
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
    /// Fetching (fetch.rs): what waits for Ruby, and where the consumer is.
    pub(super) prefetch: Prefetch,
    pub(super) position: Position,
    /// Settlement (settle.rs).
    pub(super) settlement: Settlement,
    /// Set once by stop; a watch channel so no task can miss it.
    stop: watch::Sender<bool>,
    /// Wakes a Ruby thread waiting for a batch (stop!, from a signal handler).
    pub(super) wake: Notify,
    /// The task that feeds the loop (fetch.rs or push.rs), awaited by stop.
    pub(super) fetcher: Mutex<Option<JoinHandle<()>>>,
    /// The runtime the loop's tasks run on (settlements are sent from Ruby threads too).
    pub(super) runtime: tokio::runtime::Handle,
    /// Why the loop cannot go on: a task of it panicked, or the account may not subscribe
    /// to a push durable's delivery subject. next_batch raises it, so run! ends with an
    /// error instead of waiting for messages that cannot come.
    broken: Mutex<Option<BridgeError>>,
}

impl PullLoop {
    /// A loop not yet started (lifecycle.rs starts it); `rx` receives what its feeding task delivers.
    pub(super) fn new(conn: Arc<Connection>, spec: LoopSpec, rx: mpsc::UnboundedReceiver<Delivery>) -> PullLoop {
        PullLoop {
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
        }
    }

    /// Runs one of the loop's tasks; a panic in it breaks the loop (see `broken`) and
    /// wakes the Ruby thread waiting for a batch, rather than vanishing with the task.
    pub(super) async fn guarded(self: Arc<Self>, task: &'static str, work: impl std::future::Future<Output = ()>) {
        if let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await {
            let what = crate::errors::panic_message(&*panic);
            self.log("error", "consumer_error", format!("consumer {}: its {task} task failed: {what}", self.spec.consumer.durable));
            self.break_with(BridgeError::new(Kind::Consumer, format!("the consumer's {task} task failed (internal error: {what})")));
        }
    }

    /// The loop cannot go on: `why` is what the waiting next_batch raises, and it stops.
    pub(super) fn break_with(&self, why: BridgeError) {
        *crate::sync::lock(&self.broken) = Some(why);
        self.request_stop();
    }

    /// Err once the loop is broken.
    pub(super) fn check_broken(&self) -> Result<()> {
        match crate::sync::lock(&self.broken).clone() {
            Some(why) => Err(why),
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

    /// Returns once stopping, woken by `wake`.
    pub(super) async fn wake_on_stop(&self) {
        while !self.stopping() {
            self.wake.notified().await;
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
