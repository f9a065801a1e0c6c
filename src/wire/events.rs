//! What happened inside the core (reconnects, disconnects, server errors, provisioning),
//! kept as data for Ruby to log: Ruby is never called from a tokio thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::runtime::process::PerProcess;
use crate::redact::redact;

/// Permission denials the server reported (as `-ERR 'Permissions Violation ...'`), for
/// requests waiting on a reply that will never come: they fail at once, saying why.
/// One channel per process: a forked child must not use its parent's, whose internal
/// lock another parent thread may have held at the fork.
fn denials() -> &'static broadcast::Sender<String> {
    static DENIALS: PerProcess<broadcast::Sender<String>> = PerProcess::new();
    DENIALS.get_or_make(|| Box::leak(Box::new(broadcast::channel(64).0)))
}

/// Subscribes to permission denials (before sending the request they may concern).
pub fn permission_denials() -> broadcast::Receiver<String> {
    denials().subscribe()
}

/// Records a server error if it is a permission denial.
pub fn report_server_error(message: &str) {
    if message.to_ascii_lowercase().contains("permissions violation") {
        let _ = denials().send(message.to_string());
    }
}

/// Waits for a denial that names `subject`.
pub async fn denied(mut denials: broadcast::Receiver<String>, subject: &str) -> String {
    loop {
        match denials.recv().await {
            Ok(message) if names_subject(&message, subject) => return message,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Whether a denial is about `subject` (subjects are case-sensitive: "a.b" is not named
/// by a denial of "a.b.c" or "A.b").
pub fn names_subject(denial: &str, subject: &str) -> bool {
    denied_subject(denial) == Some(subject)
}

/// The subject a denial names: the server quotes it (`... for Publish to "a.b"`, `... for
/// Subscription to "a.b" using queue "g"`: a subject has no space, so the group is cut off).
pub fn denied_subject(denial: &str) -> Option<&str> {
    let denial = denial.rfind(" using queue \"").map_or(denial, |at| &denial[..at]);
    let (start, end) = (denial.find('"')?, denial.rfind('"')?);
    (end > start).then(|| &denial[start + 1..end])
}

/// Events kept before the oldest are dropped (and counted) if Ruby does not drain them.
const CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct Event {
    pub level: &'static str,
    pub kind: String,
    pub message: String,
    pub at: String,
}

pub struct EventLog {
    queue: Mutex<VecDeque<Event>>,
    pending: AtomicBool,
    dropped: AtomicU64,
    /// Readable while events are queued: Connection's watcher thread waits on it with
    /// Ruby's own IO wait (IO#wait_readable), which also handles the process's signals, so
    /// a signal still interrupts a call blocked on another thread.
    ready: std::os::fd::OwnedFd,
}

impl Default for EventLog {
    fn default() -> Self {
        // Nonblocking; CLOEXEC (a child process must not inherit it across exec).
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd failed: {}", std::io::Error::last_os_error());
        EventLog {
            queue: Mutex::default(),
            pending: AtomicBool::default(),
            dropped: AtomicU64::default(),
            ready: unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
        }
    }
}

impl EventLog {
    pub fn push(&self, level: &'static str, kind: &str, message: &str) {
        let event = Event {
            level,
            kind: kind.to_string(),
            message: redact(message),
            at: crate::clock::now_iso8601(),
        };
        let mut queue = crate::sync::lock(&self.queue);
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
        let one = 1u64.to_ne_bytes();
        // Async-signal-safe and never blocks (the counter cannot overflow from this).
        unsafe { libc::write(self.ready_fd(), one.as_ptr() as *const libc::c_void, 8) };
    }

    /// The eventfd that is readable while events are queued (Ruby waits on it).
    pub fn ready_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.ready)
    }

    /// Cheap check for the hot path: is there anything to drain?
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes every queued event, and how many were dropped since the last drain.
    pub fn drain(&self) -> (Vec<Event>, u64) {
        let mut queue = crate::sync::lock(&self.queue);
        self.pending.store(false, Ordering::Release);
        // Reading resets the eventfd (EAGAIN when it was not set): not readable until the next push.
        let mut count = [0u8; 8];
        unsafe { libc::read(self.ready_fd(), count.as_mut_ptr() as *mut libc::c_void, 8) };
        (queue.drain(..).collect(), self.dropped.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_names_the_quoted_subject_exactly() {
        let denial = r#"Permissions Violation for Publish to "dev.app.sync.other""#;
        assert_eq!(denied_subject(denial), Some("dev.app.sync.other"));
        assert!(names_subject(denial, "dev.app.sync.other"));
        assert!(!names_subject(denial, "dev.app.sync"), "a prefix is another subject");
        assert!(!names_subject(denial, "dev.app.sync.othe"));
        assert!(!names_subject(denial, "DEV.app.sync.other"), "subjects are case-sensitive");
        assert_eq!(denied_subject("Permissions Violation"), None);
        let queue = r#"Permissions Violation for Subscription to "dev.b.sync.a.d" using queue "d""#;
        assert_eq!(denied_subject(queue), Some("dev.b.sync.a.d"));
    }
}
