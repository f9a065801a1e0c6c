//! Consuming: the pull loop (pull_loop.rs) and its jobs, each in its own file: fetching
//! with bounded prefetch and resuming where it was (fetch.rs), settlement with acks,
//! progress acks and giving back (settle.rs), dead-lettering (dead_letter.rs), and
//! messages the client cannot read (unreadable.rs).

pub mod dead_letter;
pub mod fetch;
pub mod pull_loop;
pub mod settle;
pub mod unreadable;
