//! The bodies and event ids of a `publish_batch`, packed end to end into large shared
//! blocks. Every event is built (and checked) before the first is sent, so a batch holds
//! all of them at once: one heap block per body would cost the envelope buffer's whole
//! capacity (over 1 KB) for a 300-byte event, plus malloc's overhead, per event.

use bytes::{Bytes, BytesMut};

/// Bytes per block: about 400 per event, between these bounds. A block is freed once
/// every event in it is acked, so a large batch frees its first blocks while it sends.
const MIN_BLOCK: usize = 16 * 1024;
const MAX_BLOCK: usize = 4 * 1024 * 1024;
const BYTES_PER_EVENT: usize = 400;

pub struct Arena {
    block: BytesMut,
    block_size: usize,
}

impl Arena {
    pub fn for_events(events: usize) -> Arena {
        let block_size = events.saturating_mul(BYTES_PER_EVENT).clamp(MIN_BLOCK, MAX_BLOCK);
        Arena { block: BytesMut::new(), block_size }
    }

    /// A copy of `first` followed by `second`, in the current block (a new block when it
    /// is full).
    pub fn copy_pair(&mut self, first: &[u8], second: &[u8]) -> Bytes {
        let len = first.len() + second.len();
        if self.block.capacity() - self.block.len() < len {
            // A fresh block; the full one lives on in the Bytes cut from it.
            self.block = BytesMut::with_capacity(self.block_size.max(len));
        }
        self.block.extend_from_slice(first);
        self.block.extend_from_slice(second);
        self.block.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_copies_end_to_end_in_shared_blocks() {
        let mut arena = Arena::for_events(1);
        let a = arena.copy_pair(b"{\"a\":1}", b"e-1");
        let b = arena.copy_pair(b"{}", b"e-2");
        assert_eq!((&a[..], &b[..]), (&b"{\"a\":1}e-1"[..], &b"{}e-2"[..]));
        assert_eq!(unsafe { a.as_ptr().add(a.len()) }, b.as_ptr(), "the same block, end to end");
        let big = arena.copy_pair(&vec![b'x'; MIN_BLOCK * 2], b"id");
        assert_eq!(big.len(), MIN_BLOCK * 2 + 2);
        assert_eq!(&arena.copy_pair(b"z", b"")[..], b"z");
    }
}
