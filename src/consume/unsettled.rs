//! The messages delivered and not yet settled, and the settlements not yet sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::Subject;
use bytes::Bytes;

/// What the bridge must still settle for a delivered message (the message itself is
/// kept, moved not copied, for the DLQ).
pub(super) struct Unsettled {
    pub(super) message: async_nats::Message,
    pub(super) deliveries: u64,
    pub(super) stream_seq: u64,
    pub(super) last_progress: Instant,
    /// Handed to the handler (Ruby claimed it): kept alive however long it takes. The
    /// others are waiting behind it, and are given back when it outlasts ack_wait.
    pub(super) claimed: bool,
}

/// The messages delivered and not yet settled, and the settlements not yet sent.
#[derive(Default)]
pub(super) struct Settlement {
    pub(super) unsettled: Arc<Mutex<HashMap<u64, Unsettled>>>,
    /// Acks/naks/terms queued by Ruby threads, sent together by `flush_settled` (one task
    /// and one wake-up per batch instead of one per message).
    pub(super) settled: Mutex<Vec<(Subject, Bytes)>>,
    /// The messages whose handlers run now (one per handler thread), and since when.
    pub(super) running: Mutex<HashMap<u64, Instant>>,
    /// Set while every handler thread is overdue (past ack_wait): the waiting messages
    /// have been given back, and no more are pulled until one returns.
    pub(super) overdue: AtomicBool,
    /// Running messages whose handler has outlasted max_handler_time (a deadlock, a
    /// socket without a timeout), each reported once: they get no more progress acks, so
    /// the server delivers them again after ack_wait, to another worker.
    pub(super) stuck: Mutex<HashSet<u64>>,
}
