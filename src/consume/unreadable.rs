//! Messages the NATS client cannot read. async-nats drops the whole connection when a
//! delivered message's header block is malformed (not UTF-8, a line without ':', a bad
//! header name or status), so such a message never reaches a handler or the DLQ: the
//! server redelivers it after every ack_wait, cutting the connection each time, until
//! max_deliver, and then it is silently given up.
//!
//! After a pull is cut short by a message the client could not parse (see
//! runtime/parse_failures.rs), the pull loop calls `find`: messages the
//! server counts as delivered but this process never received are read through the
//! stream API (whose JSON carries headers base64-encoded, so nothing parses them), and
//! the pull loop dead-letters each unreadable one: a copy with readable headers goes to
//! the DLQ, then the original is deleted from the stream, which the server treats as its
//! ack.

use std::collections::BTreeSet;

use serde_json::json;

use crate::errors::Result;
use crate::wire::api;
use crate::wire::connection::Connection;
use crate::wire::stored;

/// Stream lookups one recovery makes at most (about 0.1 ms each on loopback), and the
/// time it may take: several workers on one durable each look after a parse failure.
const MAX_LOOKUPS: usize = 10_000;
const TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Why async-nats would reject this header block, or None when it reads it. Mirrors the
/// parser in async-nats' connection.rs (HMSG), using its own name and status checks.
pub fn header_problem(block: &[u8]) -> Option<String> {
    let Ok(text) = std::str::from_utf8(block) else {
        return Some("the header block is not valid UTF-8".into());
    };
    let mut lines = text.lines().peekable();
    let Some(version) = lines.next().and_then(|line| line.strip_prefix("NATS/1.0")).map(str::trim) else {
        return Some("the header block does not start with NATS/1.0".into());
    };
    let status = version.split_once(' ').map_or(version, |(status, _)| status.trim());
    if !status.is_empty() && status.parse::<async_nats::StatusCode>().is_err() {
        return Some(format!("the header status {status:?} is not a status code"));
    }
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return Some(format!("the header line {:?} has no ':'", truncated(line)));
        };
        if let Err(e) = name.parse::<async_nats::HeaderName>() {
            return Some(format!("the header name {:?} is invalid: {e}", truncated(name)));
        }
        // Lines starting with whitespace continue this header's value.
        while lines.next_if(|next| next.starts_with(char::is_whitespace)).is_some() {}
    }
    None
}

fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// One unreadable message, read through the stream API.
pub struct Unreadable {
    pub subject: String,
    pub stream_seq: u64,
    pub problem: String,
    pub header_block: Vec<u8>,
    pub body: Vec<u8>,
}

/// The messages the durable has delivered that are neither held here (`held`: stream
/// sequences this process received and has not settled) nor readable by async-nats.
/// Cheap when nothing is missing: one consumer info request.
pub async fn find(conn: &Connection, stream: &str, durable: &str, filter: &str, held: &BTreeSet<u64>) -> Result<Vec<Unreadable>> {
    let info = api::request(&conn.js, &format!("CONSUMER.INFO.{stream}.{durable}"), &json!({})).await?;
    let pending = info["num_ack_pending"].as_u64().unwrap_or(0);
    if pending <= held.len() as u64 {
        return Ok(Vec::new());
    }
    let floor = info["ack_floor"]["stream_seq"].as_u64().unwrap_or(0);
    let last = info["delivered"]["stream_seq"].as_u64().unwrap_or(0);
    let filter = if filter.is_empty() { ">" } else { filter };
    let mut found = Vec::new();
    let mut seq = floor + 1;
    let deadline = tokio::time::Instant::now() + TIME_BUDGET;
    for _ in 0..MAX_LOOKUPS {
        if seq > last || tokio::time::Instant::now() > deadline {
            break;
        }
        // None: nothing stored from `seq` on.
        let Some(message) = stored::get(conn, stream, seq, Some(filter)).await? else { break };
        if message.seq < seq || message.seq > last {
            break;
        }
        seq = message.seq + 1;
        if held.contains(&message.seq) || message.header_block.is_empty() {
            continue;
        }
        if let Some(problem) = header_problem(&message.header_block) {
            found.push(Unreadable {
                subject: message.subject,
                stream_seq: message.seq,
                problem,
                header_block: message.header_block,
                body: message.body,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::header_problem;

    #[test]
    fn accepts_what_async_nats_reads() {
        assert_eq!(header_problem(b"NATS/1.0\r\nNats-Msg-Id: a\r\nX-Long: one\r\n  two\r\n\r\n"), None);
        assert_eq!(header_problem(b"NATS/1.0 503\r\n\r\n"), None);
        assert_eq!(header_problem(b"NATS/1.0 408 Request Timeout\r\n\r\n"), None);
        assert_eq!(header_problem(b"NATS/1.0\r\nX-Empty:\r\n\r\n"), None);
    }

    #[test]
    fn names_what_async_nats_rejects() {
        let problem = |block: &[u8]| header_problem(block).unwrap_or_default();
        assert!(problem(b"NATS/1.0\r\nX-Note: caf\xE9\r\n\r\n").contains("not valid UTF-8"));
        assert!(problem(b"HTTP/1.1\r\n\r\n").contains("does not start with NATS/1.0"));
        assert!(problem(b"NATS/1.0\r\nno colon here\r\n\r\n").contains("has no ':'"));
        assert!(problem(b"NATS/1.0\r\nBad Name: x\r\n\r\n").contains("header name \"Bad Name\" is invalid"));
        assert!(problem(b"NATS/1.0 abc\r\n\r\n").contains("status \"abc\""));
    }
}
