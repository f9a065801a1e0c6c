//! Ruby's unblock function for the core's waits, safe to run inside a signal handler.
//!
//! Why it must be: when the main thread is the only Ruby thread, `rb_nogvl` either
//! calls an unblock function that says it is async-signal-safe straight from Ruby's
//! signal handler (Ctrl-C, SIGTERM traps), or else starts a helper Ruby thread before the
//! wait and kills and joins it after: a thread created and destroyed around every
//! publish and every consumer fetch, which cost a single-threaded publishing loop about a
//! third of its rate.
//!
//! So the unblock function only stores an atomic flag and writes to an eventfd, both
//! async-signal-safe. A task on the runtime reads the eventfd and wakes every waiting
//! call, and each call checks its own thread's flag (`interrupted`).

use std::ffi::c_void;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};

use tokio::io::{unix::AsyncFd, Interest};
use tokio::sync::Notify;

/// A Ruby thread's interrupt state, handed to Ruby as the unblock function's argument.
/// Thread-local and without a destructor: for the main thread (the one thread a signal
/// handler reaches) it stays valid as long as the process lives.
pub struct Slot {
    /// Set by the unblock function; cleared before each wait.
    interrupted: AtomicBool,
    /// The eventfd of the runtime this thread's current call waits on.
    wake_fd: AtomicI32,
}

thread_local! {
    static SLOT: Slot = const { Slot { interrupted: AtomicBool::new(false), wake_fd: AtomicI32::new(-1) } };
}

/// Wakes waiting calls when an unblock function has run. One per runtime (per process).
pub struct Wakeups {
    fd: OwnedFd,
    notify: Notify,
}

impl Wakeups {
    /// An eventfd for unblock functions to write to. Call `forward` on the runtime.
    pub fn new() -> std::io::Result<Wakeups> {
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Wakeups { fd: unsafe { OwnedFd::from_raw_fd(fd) }, notify: Notify::new() })
    }

    /// Runs on the runtime for the life of the process: each write to the eventfd wakes
    /// every waiting call, which then checks its own flag.
    pub async fn forward(&'static self) {
        // Safety: the eventfd stays open while the AsyncFd lives: Wakeups lives in the
        // runtime, which is leaked, never freed.
        let registered = unsafe { AsyncFd::register_with_interest(Borrowed(self.fd.as_raw_fd()), Interest::READABLE) };
        let Ok(readable) = registered else { return };
        loop {
            let Ok(mut guard) = readable.readable().await else { return };
            let mut count = [0u8; 8];
            // Reading resets the eventfd's counter; EAGAIN means nothing more is pending.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr() as *mut c_void, 8) };
            if n < 0 {
                guard.clear_ready();
            }
            self.notify.notify_waiters();
        }
    }

    /// Completes once this thread's unblock function has run during the current call.
    pub async fn interrupted(&self, slot: &Slot) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read: a wake-up in between is not missed.
            notified.as_mut().enable();
            if slot.interrupted.load(SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// The eventfd as AsyncFd wants it, without giving it ownership (Wakeups keeps it).
struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Slot {
    /// Forgets an interrupt already handled: called before each wait.
    pub fn clear(&self) {
        self.interrupted.store(false, SeqCst);
    }
}

/// The calling thread's slot, for a call waiting on `wakeups`'s runtime.
pub fn slot(wakeups: &Wakeups) -> &'static Slot {
    SLOT.with(|slot| {
        slot.wake_fd.store(wakeups.fd.as_raw_fd(), SeqCst);
        // Safety: the slot is never freed before its thread exits, and a thread's calls
        // (and Ruby's use of the unblock argument) end before it does.
        unsafe { &*(slot as *const Slot) }
    })
}

/// The unblock function given to `rb_nogvl` with RB_NOGVL_UBF_ASYNC_SAFE: only atomics
/// and write(2), so it may run inside a signal handler (which must leave errno as found).
pub unsafe extern "C" fn unblock(data: *mut c_void) {
    let slot = &*(data as *const Slot);
    let errno = *libc::__errno_location();
    slot.interrupted.store(true, SeqCst);
    let fd = slot.wake_fd.load(SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        libc::write(fd, &one as *const u64 as *const c_void, 8);
    }
    *libc::__errno_location() = errno;
}
