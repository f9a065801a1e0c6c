//! Releasing Ruby's GVL around every wait, the one way the core blocks.
//!
//! `without_gvl` runs the future on the calling Ruby thread with the GVL released, that
//! thread driving the process runtime while it waits (see runtime/mod.rs: no hand-off to
//! another thread on the way in or out). Ruby's unblock function (called for
//! Thread#kill, Thread#raise/Timeout, Ctrl-C and signal traps) wakes the wait, and the
//! thread runs Ruby's pending interrupts with `rb_thread_check_ints`: if they raise, the
//! future is dropped (cancelled) and the exception propagates; if not (a trap that set a
//! flag), the same future is waited on again and nothing is lost. Panics are caught and
//! never unwind into Ruby. Ruby objects are built after the GVL is back. Never call this
//! while already outside the GVL.

use std::ffi::c_void;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures::future::CatchUnwind;
use futures::FutureExt;

use crate::errors::{BridgeError, Kind};
use crate::runtime::interrupt::{self, Slot};
use crate::runtime::{self, AfterCall};

/// One call: the future (kept across interrupted waits), the thread's interrupt slot
/// (set by the unblock function, from any thread or a signal handler), and the outcome
/// once there is one. The future is pinned on the caller's stack, not boxed: a publish's
/// future is over 1 KB, and a heap block that size costs a trip through malloc's large-
/// chunk path (consolidating Ruby's freed small chunks) on every call.
struct Call<'a, F: Future> {
    rt: &'static runtime::Runtime,
    future: Pin<&'a mut CatchUnwind<AssertUnwindSafe<F>>>,
    slot: &'static Slot,
    outcome: Option<std::thread::Result<F::Output>>,
    /// What the runtime's background thread does once this call ends.
    after: AfterCall,
}

/// Runs without the GVL: waits for the future or for the unblock function.
/// Whatever happens inside, nothing unwinds out of it: a panic outside the call's own
/// future (in the runtime, say) would otherwise cross this extern "C" frame and abort the
/// process. It becomes the call's outcome, raised in Ruby like the future's own panics.
unsafe extern "C" fn wait<F: Future>(data: *mut c_void) -> *mut c_void {
    let call = &mut *(data as *mut Call<'_, F>);
    let (rt, after) = (call.rt, call.after);
    let (future, slot) = (&mut call.future, call.slot);
    let waited = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let wait = async {
            tokio::select! {
                biased;
                out = future => Some(out),
                _ = rt.wakeups.interrupted(slot) => None,
            }
        };
        rt.block_on(wait, after)
    }));
    call.outcome = match waited {
        Ok(outcome) => outcome,
        Err(panic) => Some(Err(panic)),
    };
    std::ptr::null_mut()
}

/// Runs `future` to completion with the GVL released. Returns `Err` (after delivering any
/// pending Ruby interrupt, which may raise instead) when Ruby interrupted the wait, or on
/// a panic in the core.
pub fn without_gvl<F>(future: F) -> Result<F::Output, magnus::Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    run(future, AfterCall::Linger)
}

/// `without_gvl` for a call whose caller then works on what it got (a consumer's batch):
/// the runtime's background thread takes over at once, so prefetching goes on meanwhile.
pub fn without_gvl_handing_off<F>(future: F) -> Result<F::Output, magnus::Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    run(future, AfterCall::HandOff)
}

fn run<F>(future: F, after: AfterCall) -> Result<F::Output, magnus::Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let rt = runtime::get().map_err(|e| BridgeError::new(Kind::Internal, e).into_ruby())?;
    let slot = interrupt::slot(&rt.wakeups);
    let future = std::pin::pin!(AssertUnwindSafe(future).catch_unwind());
    let mut call = Call { rt, future, slot, outcome: None, after };
    // A consumer's batch may be there already (prefetched): then there is nothing to wait
    // for, and the GVL stays, and so does the core with the thread driving it. (Not tried
    // for other calls: a publish is never done at once, and a first poll outside the core
    // would cost it a wake-up of the runtime.)
    let ready = if after == AfterCall::HandOff { rt.poll_now(&mut call.future) } else { None };
    let outcome = match ready {
        Some(outcome) => outcome,
        None => wait_without_gvl(&mut call)?,
    };
    match outcome {
        Ok(out) => Ok(out),
        Err(panic) => {
            let what = crate::errors::panic_message(&*panic);
            Err(BridgeError::new(Kind::Internal, format!("internal error in the native core: {what}")).into_ruby())
        }
    }
}

/// Waits for the call's future with the GVL released, handling Ruby's interrupts.
fn wait_without_gvl<F: Future>(call: &mut Call<'_, F>) -> Result<std::thread::Result<F::Output>, magnus::Error> {
    // INTR_FAIL: Ruby never runs interrupts itself here (no longjmp across these frames):
    // when one is pending it returns without waiting, and it is handled below.
    // UBF_ASYNC_SAFE: see runtime/interrupt.rs (no helper Ruby thread per call).
    let flags = (rb_sys::RB_NOGVL_INTR_FAIL | rb_sys::RB_NOGVL_UBF_ASYNC_SAFE) as i32;
    loop {
        // An interrupt handled below (a trap that only set a flag) must not end the next wait.
        call.slot.clear();
        unsafe {
            rb_sys::rb_nogvl(
                Some(wait::<F>),
                call as *mut Call<'_, F> as *mut c_void,
                Some(interrupt::unblock),
                call.slot as *const Slot as *mut c_void,
                flags,
            );
        }
        if let Some(outcome) = call.outcome.take() {
            return Ok(outcome);
        }
        // Interrupted (or never started because an interrupt was pending): run what Ruby
        // has queued. Thread#kill, Timeout and Interrupt raise: drop the work and let the
        // exception through. A signal trap that only sets a flag returns: keep waiting.
        if let Err(e) = magnus::rb_sys::protect(|| unsafe {
            rb_sys::rb_thread_check_ints();
            rb_sys::Qnil as rb_sys::VALUE
        }) {
            return Err(e);
        }
    }
}
