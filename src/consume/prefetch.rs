//! Messages delivered and waiting for Ruby, and the counts that bound prefetch.

use std::sync::atomic::AtomicUsize;

use tokio::sync::{mpsc, Notify};

use crate::consume::delivery::Delivery;

/// Messages delivered and waiting for Ruby, and the counts that bound prefetch.
pub(super) struct Prefetch {
    pub(super) rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>,
    /// Delivered but not yet handed to Ruby, and asked for by pulls in flight but not yet
    /// delivered: together they bound prefetch.
    pub(super) queued: AtomicUsize,
    pub(super) requested: AtomicUsize,
    /// Wakes the task that feeds the loop when Ruby has taken the queued messages, when a
    /// handler returns (it may pull again), and when every handler thread has become
    /// overdue (a push subscription stops taking messages).
    pub(super) taken: Notify,
}

impl Prefetch {
    pub(super) fn new(rx: mpsc::UnboundedReceiver<Delivery>) -> Prefetch {
        Prefetch { rx: tokio::sync::Mutex::new(rx), queued: AtomicUsize::new(0), requested: AtomicUsize::new(0), taken: Notify::new() }
    }
}
