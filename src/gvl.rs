//! Releasing Ruby's GVL around every wait, the one way the core blocks.
//!
//! `without_gvl` spawns the future on the process runtime (so it runs on a worker beside
//! the connection's I/O task, avoiding extra thread hops) and parks the calling Ruby
//! thread, with the GVL released, until the result is in. Ruby's unblock function (called
//! for Thread#kill, Thread#raise/Timeout, Ctrl-C and signal traps) wakes the thread, which
//! runs Ruby's pending interrupts with `rb_thread_check_ints`: if they raise, the task is
//! aborted and the exception propagates; if not (a trap that set a flag), the wait goes on
//! and nothing is lost. Panics are caught
//! in the task and never unwind into Ruby. Only `Send` Rust values cross; Ruby objects
//! are built after the GVL is back. Never call this while already outside the GVL.

use std::ffi::c_void;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};

use futures::FutureExt;
use tokio::task::AbortHandle;

use crate::errors::{BridgeError, Kind};
use crate::runtime;

enum Outcome<T> {
    Pending,
    Done(std::thread::Result<T>),
    /// Ruby's unblock function ran: the waiting thread must look at its interrupts.
    Woken,
}

struct Slot<T> {
    outcome: Mutex<Outcome<T>>,
    ready: Condvar,
}

struct Waiter<T> {
    slot: Arc<Slot<T>>,
    abort: AbortHandle,
}

unsafe extern "C" fn wait<T>(data: *mut c_void) -> *mut c_void {
    let waiter = &*(data as *const Waiter<T>);
    let mut outcome = waiter.slot.outcome.lock().unwrap_or_else(|p| p.into_inner());
    while matches!(*outcome, Outcome::Pending) {
        outcome = waiter.slot.ready.wait(outcome).unwrap_or_else(|p| p.into_inner());
    }
    std::ptr::null_mut()
}

unsafe extern "C" fn unblock<T>(data: *mut c_void) {
    let waiter = &*(data as *const Waiter<T>);
    let mut outcome = waiter.slot.outcome.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(*outcome, Outcome::Pending) {
        *outcome = Outcome::Woken;
    }
    waiter.slot.ready.notify_all();
}

/// Runs `future` to completion with the GVL released. Returns `Err` (after delivering any
/// pending Ruby interrupt, which may raise instead) when Ruby interrupted the wait, or on
/// a panic in the core.
pub fn without_gvl<F>(future: F) -> Result<F::Output, magnus::Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let slot = Arc::new(Slot { outcome: Mutex::new(Outcome::Pending), ready: Condvar::new() });
    let task_slot = slot.clone();
    let handle = runtime::get().spawn(async move {
        let out = AssertUnwindSafe(future).catch_unwind().await;
        *task_slot.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Outcome::Done(out);
        task_slot.ready.notify_all();
    });
    let waiter = Waiter { slot, abort: handle.abort_handle() };
    let outcome = loop {
        unsafe {
            rb_sys::rb_thread_call_without_gvl(
                Some(wait::<F::Output>),
                &waiter as *const Waiter<F::Output> as *mut c_void,
                Some(unblock::<F::Output>),
                &waiter as *const Waiter<F::Output> as *mut c_void,
            );
        }
        let mut guard = waiter.slot.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if let Outcome::Done(result) = std::mem::replace(&mut *guard, Outcome::Pending) {
            break result;
        }
        // Woken by Ruby (or never started because an interrupt was pending): run what Ruby
        // has queued. Thread#kill, Timeout and Interrupt raise: cancel the work and let the
        // exception through. A signal trap that only sets a flag returns: keep waiting.
        drop(guard);
        if let Err(e) = magnus::rb_sys::protect(|| unsafe {
            rb_sys::rb_thread_check_ints();
            rb_sys::Qnil as rb_sys::VALUE
        }) {
            waiter.abort.abort();
            return Err(e);
        }
    };
    match outcome {
        Ok(out) => Ok(out),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(BridgeError::new(Kind::Internal, format!("internal error in the native core: {what}")).into_ruby())
        }
    }
}
