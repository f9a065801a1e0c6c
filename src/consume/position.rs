//! Where the consumer is in the stream, for recreating a durable deleted under it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Where this consumer is in the stream, for recreating a durable deleted under it: the
/// highest stream sequence delivered, those this process holds (delivered, not settled),
/// and those it gave back (NAK'd) recently. A given-back message is redelivered after its
/// delay, to this process or another worker, which settles it; so it counts only until
/// its delay plus ack_wait have passed, and a message acked elsewhere does not pull the
/// resume position back for good (which replayed every acked event after it).
#[derive(Default)]
pub(super) struct Position {
    last_seq: AtomicU64,
    held: Mutex<BTreeSet<u64>>,
    /// Stream sequence => until when it may still be waiting for redelivery.
    given_back: Mutex<BTreeMap<u64, Instant>>,
}

impl Position {
    /// A message this process now holds.
    pub(super) fn delivered(&self, seq: u64) {
        self.last_seq.fetch_max(seq, Ordering::AcqRel);
        crate::sync::lock(&self.held).insert(seq);
        crate::sync::lock(&self.given_back).remove(&seq);
    }

    /// Acked or terminated: done. NAK'd (`given_back_until` Some): waiting for a redelivery.
    pub(super) fn settled(&self, seq: u64, given_back_until: Option<Instant>) {
        crate::sync::lock(&self.held).remove(&seq);
        if let Some(until) = given_back_until {
            crate::sync::lock(&self.given_back).insert(seq, until);
        }
    }

    /// The messages this process holds.
    pub(super) fn held(&self) -> BTreeSet<u64> {
        crate::sync::lock(&self.held).clone()
    }

    /// Where a durable recreated now starts: the lowest message held or still waiting
    /// for its redelivery, else after the highest delivered (None: nothing delivered yet).
    pub(super) fn resume_at(&self) -> Option<u64> {
        let now = Instant::now();
        let mut given_back = crate::sync::lock(&self.given_back);
        given_back.retain(|_, until| *until > now);
        let lowest = [crate::sync::lock(&self.held).first().copied(), given_back.keys().next().copied()].into_iter().flatten().min();
        match (lowest, self.last_seq.load(Ordering::Acquire)) {
            (Some(seq), _) => Some(seq),
            (None, 0) => None,
            (None, last) => Some(last + 1),
        }
    }
}
