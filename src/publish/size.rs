//! What the server refuses whatever happens, checked before anything is sent (or written
//! to the outbox): a header block over JetStream's 64 KB, or a message (headers and body)
//! over the server's `max_payload`. Sent anyway, the first is refused with a generic
//! error and the second is never delivered; an outbox row of either could only die.

use async_nats::HeaderMap;

use crate::errors::{BridgeError, Kind, Result};

/// JetStream refuses a message whose header block is longer (a 16-bit length).
pub const MAX_HEADER_BLOCK: usize = 65_535;

/// "NATS/1.0\r\n" and the blank line that ends a header block.
const BLOCK_FRAME: usize = 10 + 2;

/// Size of the header block on the wire ("NATS/1.0\r\n", "Name: value\r\n" each, "\r\n"),
/// as the client and server count it against max_payload; an empty map sends none.
pub fn wire_len(headers: &HeaderMap) -> usize {
    if headers.is_empty() {
        return 0;
    }
    BLOCK_FRAME + headers.iter().map(|(name, values)| values.iter().map(|v| line_len(AsRef::<str>::as_ref(name), v.as_str())).sum::<usize>()).sum::<usize>()
}

fn line_len(name: &str, value: &str) -> usize {
    name.len() + 2 + value.len() + 2
}

/// Refuses an event whose header block (custom headers plus the bridge's Nats-Msg-Id
/// from `msg_id`) is over MAX_HEADER_BLOCK (ArgumentError), or whose headers and body
/// are over `max_payload` when it is known (PayloadTooLargeError). The error names the
/// largest header when headers are the problem.
pub fn check(msg_id: &str, body_len: usize, headers: Option<&HeaderMap>, max_payload: Option<usize>) -> Result<()> {
    let custom = headers.filter(|h| !h.is_empty());
    let id_line = line_len("Nats-Msg-Id", msg_id);
    let block = custom.map_or(BLOCK_FRAME + id_line, |h| wire_len(h) + id_line);
    if block > MAX_HEADER_BLOCK {
        return Err(BridgeError::new(
            Kind::InvalidArgument,
            format!(
                "event {msg_id}: its headers take {block} bytes, over the {MAX_HEADER_BLOCK} a NATS JetStream message can carry{}",
                largest(custom, msg_id)
            ),
        ));
    }
    match max_payload {
        Some(limit) if limit > 0 && block + body_len > limit => Err(BridgeError::new(
            Kind::PayloadTooLarge,
            format!(
                "event {msg_id} is {} bytes ({body_len} of body, {block} of headers{}), over the server's max_payload ({limit} bytes)",
                block + body_len,
                if custom.is_some() { largest(custom, msg_id) } else { String::new() }
            ),
        )),
        _ => Ok(()),
    }
}

/// "; the largest: X-Blob, 70000 bytes" for the largest custom header, or the Nats-Msg-Id.
fn largest(headers: Option<&HeaderMap>, msg_id: &str) -> String {
    let biggest = headers.and_then(|h| {
        h.iter()
            .flat_map(|(name, values)| values.iter().map(move |v| (AsRef::<str>::as_ref(name).to_string(), v.as_str().len())))
            .max_by_key(|(_, len)| *len)
    });
    match biggest {
        Some((name, len)) if len >= msg_id.len() => format!("; the largest: {name}, {len} bytes"),
        _ => format!("; the largest: Nats-Msg-Id (the event_id), {} bytes", msg_id.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, *value);
        }
        map
    }

    #[test]
    fn counts_the_block_as_the_wire_does() {
        assert_eq!(wire_len(&HeaderMap::new()), 0);
        // "NATS/1.0\r\n" + "X-A: b\r\n" + "\r\n"
        assert_eq!(wire_len(&headers(&[("X-A", "b")])), 10 + 8 + 2);
    }

    #[test]
    fn refuses_a_header_block_over_64k_naming_the_largest_header() {
        let big = "a".repeat(70_000);
        let err = check("evt-1", 10, Some(&headers(&[("X-Small", "x"), ("X-Blob", &big)])), None).unwrap_err();
        assert_eq!(err.kind, Kind::InvalidArgument);
        assert!(err.message.contains("the largest: X-Blob, 70000 bytes"), "{}", err.message);
        // The limit counts the Nats-Msg-Id line too.
        let fits = "a".repeat(MAX_HEADER_BLOCK - BLOCK_FRAME - line_len("X-Blob", "") - line_len("Nats-Msg-Id", "evt-1"));
        assert!(check("evt-1", 10, Some(&headers(&[("X-Blob", &fits)])), None).is_ok());
        let over = format!("{fits}a");
        assert!(check("evt-1", 10, Some(&headers(&[("X-Blob", &over)])), None).is_err());
    }

    #[test]
    fn refuses_headers_and_body_over_max_payload() {
        let value = "v".repeat(600);
        let err = check("evt-1", 500, Some(&headers(&[("X-Tenant", &value)])), Some(1024)).unwrap_err();
        assert_eq!(err.kind, Kind::PayloadTooLarge);
        assert!(err.message.contains("the largest: X-Tenant, 600 bytes") && err.message.contains("max_payload (1024 bytes)"), "{}", err.message);
        assert!(check("evt-1", 500, None, Some(1024)).is_ok());
        assert!(check("evt-1", 1024, None, Some(1024)).is_err()); // the Nats-Msg-Id counts too
        assert!(check("evt-1", 5_000_000, None, None).is_ok()); // max_payload unknown: the header rule only
    }
}
