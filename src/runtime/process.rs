//! This process's id without a system call on every use (glibc no longer caches
//! getpid): read once, and forgotten in the child of every fork (a pthread_atfork
//! handler), so per-process state (the runtime, buffered random bytes, Ruby's
//! connection) is rebuilt in a forked child.

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Mutex, Once};

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

/// A value made once per process (the runtime, the denial channel): read without a lock
/// on every use, made again in a forked child, which must not use its parent's (whose
/// threads and lock holders do not exist there). Values are leaked, never freed: a
/// parent's may still be referenced from memory the child inherited.
pub struct PerProcess<T: 'static> {
    current: AtomicPtr<T>,
    /// The pid `current` belongs to; stored after it.
    owner: AtomicU32,
    /// Serializes making one.
    making: Mutex<()>,
}

impl<T: 'static> PerProcess<T> {
    pub const fn new() -> Self {
        PerProcess { current: AtomicPtr::new(std::ptr::null_mut()), owner: AtomicU32::new(0), making: Mutex::new(()) }
    }

    /// This process's value, made by `make` (which leaks it) on first use.
    pub fn get_or_make(&self, make: impl FnOnce() -> &'static T) -> &'static T {
        match self.get_or_try_make(|| Ok::<_, std::convert::Infallible>(make())) {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// The same, for a value whose making can fail (nothing is kept then: the next call
    /// tries again).
    pub fn get_or_try_make<E>(&self, make: impl FnOnce() -> Result<&'static T, E>) -> Result<&'static T, E> {
        let pid = id();
        if self.owner.load(Ordering::SeqCst) != pid {
            // A poisoned lock only means another thread panicked while holding it.
            let _making = crate::sync::lock(&self.making);
            if self.owner.load(Ordering::SeqCst) != pid {
                self.current.store(make()? as *const T as *mut T, Ordering::SeqCst);
                self.owner.store(pid, Ordering::SeqCst);
            }
        }
        // Safety: set to a leaked, never freed value before `owner` named this process.
        Ok(unsafe { &*self.current.load(Ordering::SeqCst) })
    }
}

/// A value that belongs to the process that made it (a Ruby object's hold on the
/// connection or a pull loop): dropped as usual there, leaked in a forked child. The
/// child inherits the Ruby object, and the GC frees it there some day; the value belongs
/// to the parent's runtime, which does not run in the child, and dropping it could wake
/// or join threads that do not exist.
pub struct ProcessOwned<T> {
    value: ManuallyDrop<T>,
    pid: u32,
}

impl<T> ProcessOwned<T> {
    pub fn new(value: T) -> Self {
        ProcessOwned { value: ManuallyDrop::new(value), pid: id() }
    }

    /// Whether this process made it (false in a forked child).
    pub fn is_own(&self) -> bool {
        id() == self.pid
    }
}

impl<T> Deref for ProcessOwned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Drop for ProcessOwned<T> {
    fn drop(&mut self) {
        if self.is_own() {
            // Safety: dropped once, here; never used again.
            unsafe { ManuallyDrop::drop(&mut self.value) };
        }
    }
}
