//! One delivered message as Ruby takes it from the pull loop.

use async_nats::Subject;
use bytes::Bytes;

/// One delivered message (its body is parsed into Ruby objects by the Ruby thread that
/// takes it: ruby/from_json.rs).
#[derive(Debug)]
pub struct Delivery {
    pub id: u64,
    pub subject: Subject,
    pub deliveries: u64,
    pub stream_seq: u64,
    /// The Nats-Msg-Id header (read in either spelling), the publisher's event id.
    pub msg_id: Option<String>,
    pub body: Bytes,
}
