//! This process's id without a system call on every use (glibc no longer caches
//! getpid): read once, and forgotten in the child of every fork (a pthread_atfork
//! handler), so per-process state (the runtime, buffered random bytes, Ruby's
//! connection) is rebuilt in a forked child.

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
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

/// A value made once per process (the runtime, the denial channel): read without a lock
/// on every use, made again in a forked child, which must not use its parent's (whose
/// threads and lock holders do not exist there). Values are leaked, never freed: a
/// parent's may still be referenced from memory the child inherited.
pub struct PerProcess<T: 'static> {
    current: AtomicPtr<T>,
    /// The pid `current` belongs to; stored after it.
    owner: AtomicU32,
    /// The pid of the process one of whose threads is making it now (0: none). Not a
    /// lock: a lock held by a parent's thread when the process forks stays held forever
    /// in the child (that thread does not exist there), and the child could never make its
    /// own. A pid that is not this process's is such a leftover: the child takes over.
    maker: AtomicU32,
}

impl<T: 'static> PerProcess<T> {
    pub const fn new() -> Self {
        PerProcess { current: AtomicPtr::new(std::ptr::null_mut()), owner: AtomicU32::new(0), maker: AtomicU32::new(0) }
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
        let mut make = Some(make); // called once at most: it returns or ends the loop
        while self.owner.load(Ordering::SeqCst) != pid {
            let maker = self.maker.load(Ordering::SeqCst);
            if maker == pid {
                std::thread::yield_now(); // another thread of this process is making it
                continue;
            }
            if self.maker.compare_exchange(maker, pid, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                continue;
            }
            // Ours to make; the claim is released however this ends (an error, a panic).
            let _claim = MakerClaim(&self.maker);
            if self.owner.load(Ordering::SeqCst) != pid {
                let make = make.take().expect("made once at most");
                self.current.store(make()? as *const T as *mut T, Ordering::SeqCst);
                self.owner.store(pid, Ordering::SeqCst);
            }
        }
        // Safety: set to a leaked, never freed value before `owner` named this process.
        Ok(unsafe { &*self.current.load(Ordering::SeqCst) })
    }
}

/// Releases a PerProcess's `maker` claim when dropped.
struct MakerClaim<'a>(&'a AtomicU32);

impl Drop for MakerClaim<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant};

    /// A parent's thread is making the value when the process forks: the child must make
    /// its own, not wait forever for a thread it does not have.
    #[test]
    fn a_child_forked_while_a_parent_thread_makes_the_value_makes_its_own() {
        static VALUE: PerProcess<u32> = PerProcess::new();
        install_fork_handler();
        let (making, release) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let maker = {
            let (making, release) = (making.clone(), release.clone());
            std::thread::spawn(move || {
                *VALUE.get_or_make(|| {
                    making.wait();
                    release.wait(); // still making while the process forks
                    Box::leak(Box::new(1))
                })
            })
        };
        making.wait();
        let child = unsafe { libc::fork() };
        if child == 0 {
            let made = *VALUE.get_or_make(|| Box::leak(Box::new(2)));
            unsafe { libc::_exit(if made == 2 { 0 } else { 1 }) };
        }
        release.wait();
        assert_eq!(maker.join().unwrap(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = 0;
        while unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == 0 {
            if Instant::now() > deadline {
                unsafe { libc::kill(child, libc::SIGKILL) };
                panic!("the forked child hangs making its own value");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status}");
    }
}
