//! A message's NATS headers as Ruby reads them, whether delivered (the client's HeaderMap)
//! or stored (a header block from the stream API), and the one rule for a name given more
//! than once: its first value counts, as the server reads `Nats-Msg-Id` and as
//! `HeaderMap::get` does. Names are case-sensitive.

use async_nats::HeaderMap;

/// (name, value) pairs of a stored header block ("NATS/1.0\r\nName: value\r\n..."), in
/// order, read as async-nats reads a delivered one (value trimmed, a line starting with
/// whitespace continues the value before it); invalid UTF-8 becomes U+FFFD and a line
/// without ':' is skipped, so a stored message always reads.
pub fn parse_block(block: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.lines().skip(1).peekable(); // the version line
    let mut pairs = Vec::new();
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let mut value = value.trim_start().to_string();
        while let Some(more) = lines.next_if(|next| next.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        value.truncate(value.trim_end().len());
        pairs.push((name.trim().to_string(), value));
    }
    pairs
}

/// (name, value) pairs of a delivered message's headers, each name's values in order.
pub fn pairs_of(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter().flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.to_string()))).collect()
}

/// One value per name: the first (the rule above).
pub fn first_values(pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    pairs.into_iter().filter(|(name, _)| seen.insert(name.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_repeated_name_reads_as_its_first_value() {
        let block = b"NATS/1.0\r\nX-Dup: one\r\nNats-Msg-Id: a\r\nX-Dup: two\r\nx-dup: other\r\n\r\n";
        let read = first_values(parse_block(block));
        assert_eq!(read, pairs(&[("X-Dup", "one"), ("Nats-Msg-Id", "a"), ("x-dup", "other")]));
    }

    #[test]
    fn a_block_reads_as_the_client_reads_one() {
        let block = "NATS/1.0\r\nA:  spaced  \r\nB: first\r\n  continued\r\nno colon\r\nC: caf\u{e9}:x\r\n\r\n";
        assert_eq!(parse_block(block.as_bytes()), pairs(&[("A", "spaced"), ("B", "first  continued"), ("C", "caf\u{e9}:x")]));
        assert_eq!(parse_block(b"NATS/1.0\r\nX: \xff\r\n"), pairs(&[("X", "\u{fffd}")]));
        assert!(parse_block(b"").is_empty());
    }

    #[test]
    fn a_delivered_map_gives_the_same_values() {
        let mut map = HeaderMap::new();
        map.append("X-Dup", "one");
        map.append("X-Dup", "two");
        assert_eq!(first_values(pairs_of(&map)), pairs(&[("X-Dup", "one")]));
    }
}
