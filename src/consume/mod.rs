//! Consuming: the pull loop (fetching with bounded prefetch, settlement with acks and
//! progress acks, stop), dead-lettering, and messages the client cannot read.

pub mod dead_letter;
pub mod pull_loop;
pub mod unreadable;
