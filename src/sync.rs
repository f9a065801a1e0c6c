//! Locks that survive a panic.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over even when a thread panicked while holding it: every
/// lock in the core guards plain bookkeeping that a panic cannot leave half-written in a
/// way worse than losing the bridge (a panic is caught at the GVL boundary and raised in
/// Ruby, and the process goes on).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
