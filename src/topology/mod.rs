//! What exists on the server: the stream, the durable consumer, subjects and the names
//! derived from the configuration.

pub mod durable;
pub mod limits;
pub mod names;
pub mod stream;
pub mod subjects;
