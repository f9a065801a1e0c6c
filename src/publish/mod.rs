//! Publishing: the envelope, publishing with a JetStream ack (one, or a batch with acks
//! in flight), sending again when an ack can no longer come, the size limits checked
//! before sending, and the buffers that keep it from allocating per event.

pub mod batch_arena;
pub mod body_buffer;
pub mod envelope;
pub mod json_string;
pub mod publisher;
pub mod resend;
pub mod size;
