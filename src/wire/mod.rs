//! The NATS connection: connecting, JetStream API requests, connection events and
//! permission denials, telling when acks in flight may be lost, reading or deleting
//! a stream's stored messages, and reading a message's headers.

pub mod ack_loss;
pub mod api;
pub mod connection;
pub mod events;
pub mod headers;
pub mod stored;
