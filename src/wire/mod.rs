//! The NATS connection: connecting, JetStream API requests, connection events and
//! permission denials.

pub mod api;
pub mod connection;
pub mod events;
pub mod stored;
