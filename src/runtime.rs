//! One tokio runtime per process, started on first use and keyed by PID.
//!
//! Fork: a child inherits the parent's runtime as dead memory (its worker threads do not
//! exist in the child). Dropping it there would join threads that are gone and panic, so
//! runtimes are leaked (`&'static`) and a child simply builds its own on first use.

use std::sync::Mutex;
use tokio::runtime::Runtime;

static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// The runtime of the current process, created on first call.
pub fn get() -> &'static Runtime {
    let pid = std::process::id();
    // A poisoned lock only means another thread panicked while holding it; the data is
    // a plain (pid, pointer) pair and still consistent.
    let mut slot = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    match *slot {
        Some((owner, rt)) if owner == pid => rt,
        _ => {
            let rt: &'static Runtime = Box::leak(Box::new(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("jetstream-bridge")
                    .enable_all()
                    .build()
                    .expect("failed to start the tokio runtime"),
            ));
            *slot = Some((pid, rt));
            rt
        }
    }
}
