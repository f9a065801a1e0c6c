//! One tokio runtime per process, started on first use and keyed by PID.
//!
//! It is a current-thread runtime: one scheduler core runs every task and the socket I/O,
//! on whichever thread holds it. Tokio lets several threads `block_on` one such runtime:
//! the first takes the core and drives everything, the others wait for their own future.
//! - A Ruby thread in a native call (ruby/gvl.rs) takes the core and drives the connection
//!   itself while it waits: a publish's write, the server's ack and the wake-up all happen
//!   on that thread. Handing each call to a worker thread and waking the Ruby thread
//!   back cost two thread switches per call, the main cost over plain async-nats.
//! - A background thread takes the core once no Ruby thread has been in a call for
//!   IDLE_GRACE (noticed within BUSY_RECHECK; at once after a consumer's fetch), so pings,
//!   reconnects, prefetching and progress acks go on while Ruby runs Ruby code; it gives
//!   the core back as soon as a Ruby call asks for it.
//!
//! Fork: a child inherits the parent's runtime as dead memory (its threads do not exist
//! in the child). Dropping it there would join threads that are gone and panic, so
//! runtimes are leaked (`&'static`) and a child simply builds its own on first use.

pub mod interrupt;
pub mod parse_failures;
pub mod process;
pub mod random;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;

use crate::runtime::interrupt::Wakeups;
use crate::runtime::process::PerProcess;

/// How long Ruby threads must have made no call before the background thread drives the
/// runtime. Short enough that timers and prefetching barely lag, long enough that a
/// Ruby loop of calls keeps the core on its own thread.
const IDLE_GRACE: Duration = Duration::from_millis(1);

/// How often the background thread looks again while Ruby threads are in calls. Only a
/// HandOff call's end wakes it: a publishing loop ends thousands of calls a second, and
/// waking it at each would put a system call on every publish and a thread switch on
/// the core the server may be using. So after the last Linger call it takes over within
/// BUSY_RECHECK + IDLE_GRACE (pings and reconnects work in seconds).
const BUSY_RECHECK: Duration = Duration::from_millis(20);

/// The longest it waits to look again while one call goes on and on (see
/// drive_while_ruby_is_idle); also the longest a long Linger call's end goes unnoticed.
const MAX_BUSY_RECHECK: Duration = Duration::from_millis(500);

pub struct Runtime {
    tokio: tokio::runtime::Runtime,
    /// Ruby threads inside `block_on` now.
    calls: AtomicUsize,
    /// Calls started so far: the background thread sees Ruby stayed idle when it is
    /// unchanged after IDLE_GRACE (no clock read on every call).
    calls_started: AtomicU64,
    /// Set by a HandOff call's end: the background thread drives at once.
    handed_off: AtomicBool,
    /// True while the background thread holds (or is about to take) the core.
    background_driving: AtomicBool,
    /// Asks the background thread to give the core back.
    give_back: Notify,
    /// The background thread (a HandOff call's end unparks it).
    background: OnceLock<std::thread::Thread>,
    /// Wakes calls whose wait Ruby interrupted (interrupt.rs).
    pub wakeups: Wakeups,
}

static RUNTIME: PerProcess<Runtime> = PerProcess::new();

/// The runtime of the current process, created on first call. Err (a Ruby error, never a
/// panic) when the process cannot have one: no file descriptor left for its epoll or
/// eventfd, no thread for its background driver. A later call tries again.
pub fn get() -> Result<&'static Runtime, String> {
    RUNTIME.get_or_try_make(|| {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("could not start the native runtime: {e}"))?;
        let wakeups = Wakeups::new().map_err(|e| format!("could not create the native runtime's eventfd: {e}"))?;
        let rt: &'static Runtime = Box::leak(Box::new(Runtime {
            tokio,
            calls: AtomicUsize::new(0),
            calls_started: AtomicU64::new(0),
            handed_off: AtomicBool::new(false),
            background_driving: AtomicBool::new(false),
            give_back: Notify::new(),
            background: OnceLock::new(),
            wakeups,
        }));
        let thread = std::thread::Builder::new()
            .name("jetstream-bridge".into())
            .spawn(move || rt.drive_while_ruby_is_idle())
            .map_err(|e| format!("could not start the native runtime's background thread: {e}"))?;
        rt.tokio.spawn(rt.wakeups.forward());
        let _ = rt.background.set(thread.thread().clone());
        Ok(rt)
    })
}

impl Runtime {
    /// Runs `future` on the calling thread, driving the whole runtime while it waits
    /// (or, when another thread is driving, waiting for its own future). Called by
    /// Ruby threads with the GVL released; never from inside the runtime.
    pub fn block_on<F: Future>(&self, future: F, after: AfterCall) -> F::Output {
        // SeqCst pairs with the background thread's check: either it sees this call and
        // stays away, or this call sees it driving and asks for the core back.
        self.calls.fetch_add(1, SeqCst);
        self.calls_started.fetch_add(1, SeqCst);
        let _call = CallGuard { runtime: self, after };
        if self.background_driving.load(SeqCst) {
            self.give_back.notify_one();
        }
        // This thread may drive the connection's tasks: watch what async-nats reports
        // (only while it does; the thread's own default comes back after).
        let _watch = crate::runtime::parse_failures::scope();
        self.tokio.block_on(future)
    }

    /// Polls `future` once on the calling thread, without taking the core: Some when it
    /// is already done (say, messages already prefetched), so the caller need not wait,
    /// and the thread driving the runtime keeps it. A future polled here is polled again
    /// by `block_on` with a real waker if it is not done.
    pub fn poll_now<F: Future + Unpin>(&self, future: &mut F) -> Option<F::Output> {
        let _context = self.tokio.enter();
        match Pin::new(future).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        }
    }

    /// The background thread: drives the runtime whenever Ruby threads have been out of
    /// calls for IDLE_GRACE, until a call asks for the core.
    fn drive_while_ruby_is_idle(&self) {
        // This thread only drives the runtime: it watches for as long as it lives.
        let _watch = crate::runtime::parse_failures::scope();
        let mut recheck = BUSY_RECHECK;
        let mut seen_started = self.calls_started.load(SeqCst);
        loop {
            if self.calls.load(SeqCst) > 0 {
                // Sleep while a call drives. A HandOff call's end unparks; an unpark that
                // comes first is kept as a token, so such an end is not missed.
                std::thread::park_timeout(recheck);
                // Calls coming and going (a publishing loop): look every BUSY_RECHECK. The
                // same call going on (a consumer waiting for messages): less and less
                // often, so an idle process does not wake fifty times a second.
                let started = self.calls_started.load(SeqCst);
                recheck = if started == seen_started { (recheck * 2).min(MAX_BUSY_RECHECK) } else { BUSY_RECHECK };
                seen_started = started;
                continue;
            }
            recheck = BUSY_RECHECK;
            // After a HandOff call, drive at once. Otherwise linger while Ruby may call
            // again (a HandOff call ending wakes this), and drive if no call started.
            if !self.handed_off.swap(false, SeqCst) {
                let started = self.calls_started.load(SeqCst);
                std::thread::park_timeout(IDLE_GRACE);
                if self.calls.load(SeqCst) > 0 || self.calls_started.load(SeqCst) != started {
                    continue;
                }
            }
            self.background_driving.store(true, SeqCst);
            if self.calls.load(SeqCst) == 0 {
                // A give_back sent before this wait is kept as a permit: none is missed.
                self.tokio.block_on(self.give_back.notified());
            }
            self.background_driving.store(false, SeqCst);
        }
    }
}

/// What the background thread does when a Ruby call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCall {
    /// Is not woken, and drives once it finds Ruby idle for IDLE_GRACE (within
    /// BUSY_RECHECK): the caller is likely to call again at once (a publishing loop), and
    /// waking it or taking the core back and forth would cost each call.
    Linger,
    /// Drives at once: the caller goes off to work on what it got (a consumer's batch)
    /// while prefetching goes on.
    HandOff,
}

/// Ends a call, even if its future panicked.
struct CallGuard<'a> {
    runtime: &'a Runtime,
    after: AfterCall,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let rt = self.runtime;
        if self.after == AfterCall::HandOff {
            rt.handed_off.store(true, SeqCst);
        }
        // Unparking a thread that is not parked costs no system call.
        if rt.calls.fetch_sub(1, SeqCst) == 1 && self.after == AfterCall::HandOff {
            if let Some(thread) = rt.background.get() {
                thread.unpark();
            }
        }
    }
}
