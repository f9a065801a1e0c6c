//! One envelope buffer per thread, used again by the thread's next publish. An envelope
//! is over 1 KB, and a heap block that size takes malloc's large-chunk path (which first
//! merges the small chunks Ruby has freed) on every allocation and free; a publishing
//! loop would pay that twice per event.

use std::cell::Cell;

use bytes::Bytes;

/// Larger buffers are not kept: one big payload must not pin its memory to the thread.
const MAX_KEPT: usize = 64 * 1024;

thread_local! {
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// An empty String with room for `capacity` bytes: the thread's spare buffer when it has one.
pub fn take(capacity: usize) -> String {
    let mut buffer = SPARE.with(Cell::take);
    buffer.clear();
    buffer.reserve(capacity);
    String::from_utf8(buffer).expect("an empty buffer is valid UTF-8")
}

/// Keeps a buffer whose text has been copied elsewhere as the thread's spare buffer.
pub fn keep(buffer: String) {
    keep_bytes(buffer.into_bytes());
}

fn keep_bytes(buffer: Vec<u8>) {
    if buffer.capacity() <= MAX_KEPT {
        SPARE.with(|spare| spare.set(buffer));
    }
}

/// Keeps a sent body as the thread's spare buffer, unless something still refers to it
/// (the connection queued it while disconnected, say).
pub fn give_back(body: Bytes) {
    if !body.is_unique() {
        return;
    }
    // Unique: this takes the allocation back, no copy.
    keep_bytes(Vec::from(body));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_nothing_else_holds_is_used_again() {
        let mut first = take(2000);
        first.push_str("{\"a\":1}");
        let at = first.as_ptr();
        give_back(Bytes::from(first));
        let second = take(100);
        assert!(second.is_empty());
        assert_eq!(second.as_ptr(), at, "the same allocation comes back");
    }

    #[test]
    fn a_body_still_held_elsewhere_is_not_kept() {
        let mut first = take(2000);
        first.push_str("{\"a\":1}");
        let body = Bytes::from(first);
        let held = body.clone();
        give_back(body);
        // Taking it would have copied the held bytes into a new buffer: nothing is kept.
        assert_eq!(SPARE.with(Cell::take).capacity(), 0);
        assert_eq!(&held[..], b"{\"a\":1}");
    }
}
