//! Releasing Ruby's GVL around every wait, the one way the core blocks.
//!
//! `without_gvl` runs a future to completion on the calling Ruby thread with the GVL
//! released, so other Ruby threads keep running. Ruby's unblock function (called for
//! Thread#kill, Thread#raise/Timeout and Ctrl-C) cancels the future; afterwards pending
//! interrupts are delivered with `rb_thread_check_ints`. Panics are caught here and never
//! unwind into Ruby. Only `Send` Rust values cross; Ruby objects are built after the GVL
//! is back. Never call this while already outside the GVL.

use std::ffi::c_void;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use tokio::sync::Notify;

use crate::errors::{BridgeError, Kind};
use crate::runtime;

struct Call<F: Future> {
    future: Option<F>,
    cancel: Arc<Notify>,
    outcome: Option<std::thread::Result<Option<F::Output>>>,
}

unsafe extern "C" fn run<F: Future>(data: *mut c_void) -> *mut c_void {
    let call = &mut *(data as *mut Call<F>);
    let future = call.future.take().expect("future polled twice");
    let cancel = call.cancel.clone();
    call.outcome = Some(catch_unwind(AssertUnwindSafe(|| {
        runtime::get().block_on(async move {
            tokio::select! {
                out = future => Some(out),
                _ = cancel.notified() => None,
            }
        })
    })));
    std::ptr::null_mut()
}

unsafe extern "C" fn unblock(data: *mut c_void) {
    // Runs on a Ruby thread without our stack frame's guarantees: only signal, never block.
    let cancel = &*(data as *const Notify);
    cancel.notify_one();
}

/// Runs `future` with the GVL released. Returns `Err` (after delivering any pending Ruby
/// interrupt, which may raise instead) when Ruby interrupted the wait, or on a panic.
pub fn without_gvl<F>(future: F) -> Result<F::Output, magnus::Error>
where
    F: Future + Send,
    F::Output: Send,
{
    let cancel = Arc::new(Notify::new());
    let mut call = Call { future: Some(future), cancel: cancel.clone(), outcome: None };
    unsafe {
        rb_sys::rb_thread_call_without_gvl(
            Some(run::<F>),
            &mut call as *mut Call<F> as *mut c_void,
            Some(unblock),
            Arc::as_ptr(&cancel) as *mut c_void,
        );
    }
    match call.outcome {
        Some(Ok(Some(out))) => Ok(out),
        Some(Ok(None)) | None => {
            // Interrupted (or never run because an interrupt was already pending):
            // let Ruby raise what it has queued (Thread#kill, Timeout, Interrupt).
            magnus::rb_sys::protect(|| unsafe {
                rb_sys::rb_thread_check_ints();
                rb_sys::Qnil as rb_sys::VALUE
            })?;
            Err(BridgeError::new(Kind::Interrupted, "the wait was interrupted").into_ruby())
        }
        Some(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(BridgeError::new(Kind::Internal, format!("internal error in the native core: {what}"))
                .into_ruby())
        }
    }
}
