//! The headers of a dead-letter copy. The copy keeps the original's own headers and adds
//! the failure's X-* headers, and it must always be storable, or the original (already at
//! its last delivery) would have nowhere to go:
//! - the original's `Nats-*` headers are server directives (`Nats-Expected-Last-Msg-Id`,
//!   `Nats-Rollup`, `Nats-TTL`, ...): copied onto the DLQ publish they made the server
//!   refuse it (or worse, roll the DLQ subject up), so none is copied;
//! - every added value is bounded, and when the copy would still exceed the server's
//!   `max_payload` (an original close to the limit), fewer headers are written, down to
//!   none: a body that fit as the original also fits as the copy.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::consume::dlq_headers as header;
use crate::consume::pull_loop::PullLoop;
use crate::consume::settle::Settle;
use crate::consume::unreadable;
use crate::errors::{BridgeError, Kind, Result};
use crate::publish::size::wire_len;

/// Longest X-Error-Message and X-Error-Class values, in bytes.
const MAX_ERROR_MESSAGE_BYTES: usize = 512;
const MAX_ERROR_CLASS_BYTES: usize = 256;

/// What went wrong with a message, as the DLQ copy's headers tell it.
pub struct Failure<'a> {
    pub subject: &'a str,
    pub stream_seq: u64,
    /// Delivery attempts so far (unknown for a message the client could not read).
    pub deliveries: Option<u64>,
    pub reason: &'a str,
    pub error_class: &'a str,
    pub error_message: &'a str,
}

/// The copy's identity on the DLQ subject: one per original message, so a retried DLQ
/// publish is dropped as a duplicate and never collides with the original's own id.
pub fn dlq_msg_id(stream: &str, stream_seq: u64) -> String {
    format!("dlq:{stream}:{stream_seq}")
}

/// The headers for the copy of a message whose body is `body_len` bytes: the fullest set
/// (in the order below) whose size plus the body fits in `max_payload`.
///   1. the original's headers and every X-* header;
///   2. the original's headers, the copy's id, reason, stream sequence and original subject;
///   3. the copy's id, reason and stream sequence;
///   4. the copy's id;
///   5. no headers at all (the body alone fit as the original).
pub fn headers(original: Option<&HeaderMap>, failure: &Failure, stream: &str, consumer: &str, body_len: usize, max_payload: usize) -> HeaderMap {
    let id = dlq_msg_id(stream, failure.stream_seq);
    let kept = original.map(without_server_directives).unwrap_or_default();
    let original_msg_id = original.and_then(|h| h.get("Nats-Msg-Id").or_else(|| h.get("nats-msg-id"))).map(|v| v.to_string());
    let fits = |h: &HeaderMap| wire_len(h) + body_len <= max_payload;

    let mut full = kept.clone();
    if let Some(original_msg_id) = &original_msg_id {
        full.insert(header::ORIGINAL_MSG_ID, one_line(original_msg_id, 1024).as_str());
    }
    if let Some(deliveries) = failure.deliveries {
        full.insert(header::DELIVERIES, deliveries.to_string().as_str());
    }
    full.insert(header::ERROR_CLASS, one_line(failure.error_class, MAX_ERROR_CLASS_BYTES).as_str());
    // A handler's error text may quote a connection URL or a credential: stored data
    // is redacted like the logs.
    let error_message = crate::redact::redact(failure.error_message);
    full.insert(header::ERROR_MESSAGE, one_line(&error_message, MAX_ERROR_MESSAGE_BYTES).as_str());
    full.insert(header::CONSUMER, consumer);
    full.insert(header::FAILED_AT, crate::clock::now_iso8601().as_str());
    essentials(&mut full, &id, failure, true);
    if fits(&full) {
        return full;
    }
    let mut reduced = kept;
    essentials(&mut reduced, &id, failure, true);
    if fits(&reduced) {
        return reduced;
    }
    let mut minimal = HeaderMap::new();
    essentials(&mut minimal, &id, failure, false);
    if fits(&minimal) {
        return minimal;
    }
    let mut id_only = HeaderMap::new();
    id_only.insert(header::MSG_ID, id.as_str());
    if fits(&id_only) {
        return id_only;
    }
    HeaderMap::new()
}

fn essentials(headers: &mut HeaderMap, id: &str, failure: &Failure, with_subject: bool) {
    headers.insert(header::MSG_ID, id);
    headers.insert(header::REASON, failure.reason);
    headers.insert(header::STREAM_SEQ, failure.stream_seq.to_string().as_str());
    if with_subject {
        headers.insert(header::ORIGINAL_SUBJECT, failure.subject);
    }
}

/// The original's headers without its `Nats-*` ones (any spelling).
fn without_server_directives(original: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for (name, values) in original.iter() {
        let name: &str = name.as_ref();
        if name.get(..5).is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-")) {
            continue;
        }
        for value in values {
            kept.append(name, value.as_str());
        }
    }
    kept
}

/// A header value: one line of visible text (control characters become spaces), at most
/// `max_bytes` bytes, cut at a character boundary.
pub fn one_line(text: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_bytes));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

impl PullLoop {
    /// Publishes the message to the DLQ with its original body and headers plus the
    /// reasons (dead_letter.rs), waits for that ack, and only then terminates the
    /// original. On failure the original stays unsettled (the caller naks it) and nothing
    /// is lost.
    pub async fn dead_letter(&self, id: u64, reason: &str, error_class: &str, error_message: &str) -> Result<()> {
        let dlq = self
            .spec
            .dlq_subject
            .clone()
            .ok_or_else(|| BridgeError::new(Kind::Consumer, "use_dlq is off"))?;
        let (subject, body, headers, deliveries, stream_seq) = {
            let map = crate::sync::lock(&self.settlement.unsettled);
            let u = map
                .get(&id)
                .ok_or_else(|| BridgeError::new(Kind::Consumer, format!("message {id} is already settled")))?;
            let m = &u.message;
            (m.subject.to_string(), m.payload.clone(), m.headers.clone(), u.deliveries, u.stream_seq)
        };
        let failure = Failure { subject: &subject, stream_seq, deliveries: Some(deliveries), reason, error_class, error_message };
        self.publish_dead_letter(&dlq, headers.as_ref(), body, failure).await?;
        self.settle(id, Settle::Term);
        self.flush_settled();
        Ok(())
    }

    /// Stores a copy on the DLQ subject with the failure described in X-* headers and
    /// waits for its ack.
    pub(super) async fn publish_dead_letter(&self, dlq: &str, original: Option<&HeaderMap>, body: Bytes, failure: Failure<'_>) -> Result<()> {
        let max_payload = self.conn.client.max_payload();
        let headers = headers(original, &failure, &self.spec.consumer.stream, &self.spec.consumer.durable, body.len(), max_payload);
        let sent = if headers.is_empty() {
            self.conn.js.publish(dlq.to_string(), body).await
        } else {
            self.conn.js.publish_with_headers(dlq.to_string(), headers, body).await
        };
        let ack = sent.map_err(|e| dlq_error(dlq, &e.to_string()))?;
        ack.await.map_err(|e| dlq_error(dlq, &e.to_string()))?;
        Ok(())
    }

    /// Finds delivered messages whose headers async-nats cannot read (see unreadable.rs)
    /// and moves each to the DLQ: copy stored first, original deleted after. Failures
    /// are logged; the message then stays where it is and is looked at again next time.
    pub(super) async fn dead_letter_unreadable(&self) {
        let spec = &self.spec.consumer;
        let held = self.position.held();
        let found = match unreadable::find(&self.conn, &spec.stream, &spec.durable, &spec.filter_subject, &held).await {
            Ok(found) => found,
            Err(e) => {
                self.log("warn", "consumer_error", format!("could not look for unreadable messages on {}: {e}", spec.durable));
                return;
            }
        };
        for message in found {
            let what = format!("message {} on {} (stream seq {})", message.subject, spec.stream, message.stream_seq);
            let Some(dlq) = self.spec.dlq_subject.clone() else {
                self.log("error", "unreadable_message", format!("{what} has unreadable headers ({}); use_dlq is off, so it stays in the stream and is redelivered until max_deliver", message.problem));
                continue;
            };
            let mut headers = HeaderMap::new();
            headers.insert(header::ORIGINAL_HEADERS_BASE64, crate::wire::stored::encode(&message.header_block).as_str());
            let error_message = format!("headers cannot be read: {}", message.problem);
            let failure = Failure {
                subject: &message.subject,
                stream_seq: message.stream_seq,
                deliveries: None,
                reason: "malformed",
                error_class: "JetstreamBridge::MalformedMessageError",
                error_message: &error_message,
            };
            let moved = match self.publish_dead_letter(&dlq, Some(&headers), Bytes::from(message.body), failure).await {
                Ok(()) => crate::wire::stored::delete(&self.conn, &spec.stream, message.stream_seq).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match moved {
                Ok(()) => self.log("warn", "dead_lettered", format!("{what} moved to {dlq}: {error_message}")),
                Err(e) => self.log("error", "unreadable_message", format!("{what} has unreadable headers and could not be dead-lettered: {e}")),
            }
        }
    }
}

fn dlq_error(subject: &str, detail: &str) -> BridgeError {
    BridgeError::new(Kind::DlqRouting, format!("dead-letter publish to {subject:?} failed: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(message: &str) -> Failure<'_> {
        Failure { subject: "t.other.sync.app", stream_seq: 7, deliveries: Some(3), reason: "max_deliver", error_class: "RuntimeError", error_message: message }
    }

    fn original() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", "ev-1");
        h.insert("Nats-Expected-Last-Msg-Id", "ev-0");
        h.insert("nats-rollup", "sub");
        h.insert("traceparent", "00-abc-def-01");
        h
    }

    #[test]
    fn drops_server_directives_and_keeps_the_rest() {
        let h = headers(Some(&original()), &failure("boom"), "s", "c", 10, 1 << 20);
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("dlq:s:7"));
        assert!(h.get("Nats-Expected-Last-Msg-Id").is_none());
        assert!(h.get("nats-rollup").is_none());
        assert_eq!(h.get("traceparent").map(|v| v.as_str()), Some("00-abc-def-01"));
        assert_eq!(h.get("X-Original-Msg-Id").map(|v| v.as_str()), Some("ev-1"));
        assert_eq!(h.get("X-Deliveries").map(|v| v.as_str()), Some("3"));
        assert_eq!(h.get("X-Error-Message").map(|v| v.as_str()), Some("boom"));
    }

    #[test]
    fn bounds_the_error_text() {
        let long = "é".repeat(5_000);
        let h = headers(None, &failure(&long), "s", "c", 10, 1 << 20);
        let message = h.get("X-Error-Message").unwrap().as_str();
        assert!(message.len() <= MAX_ERROR_MESSAGE_BYTES && message.len() >= MAX_ERROR_MESSAGE_BYTES - 1);
        assert_eq!(one_line("a\r\nb\tc", 100), "a  b c");
    }

    #[test]
    fn a_body_that_fit_as_the_original_fits_as_the_copy() {
        let original = original();
        let original_len = wire_len(&original);
        let max = 4096;
        for body_len in (max - original_len - 300)..=(max - original_len) {
            let h = headers(Some(&original), &failure(&"x".repeat(900)), "a-long-stream-name", "c", body_len, max);
            assert!(wire_len(&h) + body_len <= max, "body {body_len}: {} header bytes", wire_len(&h));
        }
        let reduced = headers(Some(&original), &failure("x"), "s", "c", max - original_len, max);
        assert!(reduced.get("X-Error-Message").is_none());
        assert_eq!(headers(None, &failure("x"), "s", "c", max, max).len(), 0);
    }
}
