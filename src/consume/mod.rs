//! Consuming: the pull loop and its jobs, each in its own file. From the bottom up: what
//! the loop holds (delivery.rs, prefetch.rs, position.rs, unsettled.rs), the loop itself
//! and its stop signal (pull_loop.rs), settlement with acks, progress acks and giving
//! back (settle.rs), messages the client cannot read (unreadable.rs), dead-lettering
//! (dead_letter.rs; its header names in dlq_headers.rs), taking in a delivered message
//! from either source (intake.rs), the two sources: fetching with bounded prefetch and
//! resuming where it was (fetch.rs), and a push durable's deliveries (push.rs); and
//! starting, taking batches and stopping (lifecycle.rs).

pub mod dead_letter;
pub mod delivery;
pub mod dlq_headers;
pub mod fetch;
pub mod intake;
pub mod lifecycle;
pub mod position;
pub mod prefetch;
pub mod pull_loop;
pub mod push;
pub mod settle;
pub mod unreadable;
pub mod unsettled;
