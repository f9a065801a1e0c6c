//! The NATS connection: connecting, JetStream API requests, connection events and
//! permission denials, telling when acks in flight may be lost, and reading or deleting
//! a stream's stored messages.

pub mod ack_loss;
pub mod api;
pub mod connection;
pub mod events;
pub mod stored;
