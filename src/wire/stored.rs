//! Messages stored in a stream, read and deleted through the JetStream API. Its JSON
//! carries the header block base64-encoded, so nothing parses it on the way: a block the
//! client could not read (consume/unreadable.rs) is read here too.

use base64::Engine;
use serde_json::{json, Value};

use crate::errors::Result;
use crate::wire::api;
use crate::wire::connection::Connection;

/// One stored message.
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    /// The raw header block ("NATS/1.0\r\n..."), empty when the message has none.
    pub header_block: Vec<u8>,
    pub body: Vec<u8>,
    /// When the stream stored it (RFC 3339).
    pub time: String,
}

/// The first message of `stream` at or after `seq`, on `subject` when given; None when
/// there is none.
pub async fn get(conn: &Connection, stream: &str, seq: u64, subject: Option<&str>) -> Result<Option<Stored>> {
    let request = match subject {
        Some(subject) => json!({ "seq": seq, "next_by_subj": subject }),
        None => json!({ "seq": seq }),
    };
    let message = match api::request(&conn.js, &format!("STREAM.MSG.GET.{stream}"), &request).await {
        Ok(reply) => reply["message"].clone(),
        Err(e) if api::is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(seq) = message["seq"].as_u64() else { return Ok(None) };
    Ok(Some(Stored {
        seq,
        subject: message["subject"].as_str().unwrap_or_default().to_string(),
        header_block: decode(&message["hdrs"]),
        body: decode(&message["data"]),
        time: message["time"].as_str().unwrap_or_default().to_string(),
    }))
}

/// Deletes message `seq`; false when it was not there (another process got there
/// first). A pending message that is deleted counts as acked on the server.
pub async fn delete(conn: &Connection, stream: &str, seq: u64) -> Result<bool> {
    let request = json!({ "seq": seq, "no_erase": true });
    match api::request(&conn.js, &format!("STREAM.MSG.DELETE.{stream}"), &request).await {
        Ok(_) => Ok(true),
        Err(e) if api::is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

pub fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode(value: &Value) -> Vec<u8> {
    value
        .as_str()
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .unwrap_or_default()
}
