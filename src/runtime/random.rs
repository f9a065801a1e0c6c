//! Random bytes for event and trace ids and inbox names: read from the OS's random source a few KB at a
//! time (one system call per ~170 events instead of one each). The buffer is per thread
//! and tagged with the process id: a forked child, which inherits the parent's copy,
//! refills it instead of repeating the parent's ids (a user-space generator copied by
//! fork would produce the same ids in every worker, and the server would drop them as
//! duplicates).

use std::cell::RefCell;

const POOL_BYTES: usize = 4096;

struct Pool {
    pid: u32,
    bytes: [u8; POOL_BYTES],
    used: usize,
}

thread_local! {
    // Boxed: a shared library's thread-locals must stay small (static TLS is scarce).
    static POOL: RefCell<Option<Box<Pool>>> = const { RefCell::new(None) };
}

/// Fills `out` (at most POOL_BYTES) with bytes no other call, thread or process gets.
pub fn fill(out: &mut [u8]) -> Result<(), String> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pool = pool.get_or_insert_with(|| Box::new(Pool { pid: 0, bytes: [0; POOL_BYTES], used: POOL_BYTES }));
        let pid = crate::runtime::process::id();
        if pool.pid != pid || pool.used + out.len() > POOL_BYTES {
            getrandom::fill(&mut pool.bytes).map_err(|e| format!("no random source: {e}"))?;
            pool.pid = pid;
            pool.used = 0;
        }
        let start = pool.used;
        out.copy_from_slice(&pool.bytes[start..start + out.len()]);
        // Handed out once: wiped so a later bug could not hand them out again.
        pool.bytes[start..start + out.len()].fill(0);
        pool.used += out.len();
        Ok(())
    })
}

/// Appends the lower-case hex of `bytes`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn never_repeats_bytes() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut id = [0u8; 16];
            super::fill(&mut id).unwrap();
            assert!(seen.insert(id), "repeated random bytes");
        }
    }
}
