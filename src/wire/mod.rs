//! The NATS connection: connecting, JetStream API requests, connection events and
//! permission denials, and redaction of secrets in everything that leaves the core.

pub mod api;
pub mod connection;
pub mod events;
pub mod parse_failures;
pub mod redact;
pub mod stored;
