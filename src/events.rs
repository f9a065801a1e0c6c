//! What happened inside the core (reconnects, disconnects, server errors, provisioning),
//! kept as data for Ruby to log: Ruby is never called from a tokio thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::redact::redact;

/// Events kept before the oldest are dropped (and counted) if Ruby does not drain them.
const CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct Event {
    pub level: &'static str,
    pub kind: String,
    pub message: String,
    pub at: String,
}

#[derive(Default)]
pub struct EventLog {
    queue: Mutex<VecDeque<Event>>,
    pending: AtomicBool,
    dropped: AtomicU64,
}

impl EventLog {
    pub fn push(&self, level: &'static str, kind: &str, message: &str) {
        let event = Event {
            level,
            kind: kind.to_string(),
            message: redact(message),
            at: crate::envelope::now_iso8601(),
        };
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        // A reconnect loop repeats the same event many times: keep one until it changes.
        if queue.back().is_some_and(|last| last.kind == event.kind && last.message == event.message) {
            return;
        }
        if queue.len() >= CAPACITY {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(event);
        self.pending.store(true, Ordering::Release);
    }

    /// Cheap check for the hot path: is there anything to drain?
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes every queued event, and how many were dropped since the last drain.
    pub fn drain(&self) -> (Vec<Event>, u64) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.store(false, Ordering::Release);
        (queue.drain(..).collect(), self.dropped.swap(0, Ordering::Relaxed))
    }
}
