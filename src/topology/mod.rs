//! What exists on the server: the stream, the durable consumer, subjects and the names
//! derived from the configuration; provisioned or verified through ensure.rs.

pub mod durable;
pub mod ensure;
pub mod limits;
pub mod names;
pub mod stream;
pub mod subjects;
pub mod verify;
