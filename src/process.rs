//! This process's id without a system call on every use (glibc no longer caches
//! getpid): read once, and forgotten in the child of every fork (a pthread_atfork
//! handler), so per-process state (the runtime, buffered random bytes, Ruby's
//! connection) is rebuilt in a forked child.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// 0: not read yet (or forgotten by the fork handler).
static PID: AtomicU32 = AtomicU32::new(0);

extern "C" {
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> std::os::raw::c_int;
}

/// Runs in the child right after fork: only an atomic store (async-signal-safe).
unsafe extern "C" fn forget_pid_in_child() {
    PID.store(0, Ordering::SeqCst);
}

/// Registers the fork handler; called once when the extension loads.
pub fn install_fork_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| unsafe {
        pthread_atfork(None, None, Some(forget_pid_in_child));
    });
}

/// The current process id.
pub fn id() -> u32 {
    match PID.load(Ordering::SeqCst) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Ordering::SeqCst);
            pid
        }
        pid => pid,
    }
}
