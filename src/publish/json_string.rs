//! JSON strings written byte for byte as Ruby's generators write them (the json gem, or
//! ActiveSupport with its extra escapes): the envelope's fields and, through
//! ruby/to_json.rs, every string of a payload.

/// Whose output to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// JSON.generate (the json gem).
    JsonGem,
    /// ActiveSupport::JSON.encode: also escapes U+2028 and U+2029 ...
    ActiveSupport,
    /// ... and `<`, `>`, `&` when ActiveSupport.escape_html_entities_in_json is on.
    ActiveSupportHtmlSafe,
}

/// Bytes that need a look, per style: control characters, `"` and `\`; for
/// ActiveSupport the first byte of U+2028/U+2029 (0xE2), and `<`, `>`, `&` when HTML-safe.
const fn special_bytes(style: Style) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    if !matches!(style, Style::JsonGem) {
        table[0xe2] = true;
    }
    if matches!(style, Style::ActiveSupportHtmlSafe) {
        table[b'<' as usize] = true;
        table[b'>' as usize] = true;
        table[b'&' as usize] = true;
    }
    table
}

const SPECIAL_GEM: [bool; 256] = special_bytes(Style::JsonGem);
const SPECIAL_AS: [bool; 256] = special_bytes(Style::ActiveSupport);
const SPECIAL_AS_HTML: [bool; 256] = special_bytes(Style::ActiveSupportHtmlSafe);

/// Writes `text` as a JSON string: `"` and `\` escaped, control characters as \b \f \n
/// \r \t or \u00XX (lower-case hex, as the json gem writes them), plus ActiveSupport's
/// extra escapes for its styles. Everything else, '/' and non-ASCII included, is kept.
pub fn escape_into(out: &mut String, text: &str, style: Style) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let special = match style {
        Style::JsonGem => &SPECIAL_GEM,
        Style::ActiveSupport => &SPECIAL_AS,
        Style::ActiveSupportHtmlSafe => &SPECIAL_AS_HTML,
    };
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push('"');
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        i = skip_plain(bytes, i, style);
        let Some(&b) = bytes.get(i) else { break };
        if !special[b as usize] {
            i += 1;
            continue;
        }
        let (escaped, width): (&str, usize) = match b {
            b'"' => ("\\\"", 1),
            b'\\' => ("\\\\", 1),
            0x08 => ("\\b", 1),
            0x0c => ("\\f", 1),
            b'\n' => ("\\n", 1),
            b'\r' => ("\\r", 1),
            b'\t' => ("\\t", 1),
            0x00..=0x1f => ("", 1),
            b'<' => ("\\u003c", 1),
            b'>' => ("\\u003e", 1),
            b'&' => ("\\u0026", 1),
            // 0xE2: U+2028 and U+2029 are E2 80 A8 and E2 80 A9; other characters stay.
            _ => match bytes.get(i + 1..i + 3) {
                Some([0x80, 0xa8]) => ("\\u2028", 3),
                Some([0x80, 0xa9]) => ("\\u2029", 3),
                _ => {
                    i += 1;
                    continue;
                }
            },
        };
        out.push_str(&text[start..i]);
        if escaped.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(escaped);
        }
        i += width;
        start = i;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// Skips from `i` past bytes none of which needs a look for `style` (special_bytes),
/// sixteen at a time with SSE2 (part of every x86_64); stops at or before the first that
/// may. Elsewhere, and for the last few bytes, the caller's byte loop does the work.
#[cfg(target_arch = "x86_64")]
fn skip_plain(bytes: &[u8], mut i: usize, style: Style) -> usize {
    // Safety: SSE2 is part of x86_64; every load reads 16 bytes inside `bytes`.
    unsafe {
        use std::arch::x86_64::*;
        let control_max = _mm_set1_epi8(0x1f);
        let byte = |b: u8| _mm_set1_epi8(b as i8);
        while i + 16 <= bytes.len() {
            let v = _mm_loadu_si128(bytes.as_ptr().add(i) as *const __m128i);
            // max(v, 0x1f) == 0x1f exactly for the (unsigned) bytes below 0x20.
            let control = _mm_cmpeq_epi8(_mm_max_epu8(v, control_max), control_max);
            let mut hit = _mm_or_si128(control, _mm_or_si128(_mm_cmpeq_epi8(v, byte(b'"')), _mm_cmpeq_epi8(v, byte(b'\\'))));
            if style != Style::JsonGem {
                hit = _mm_or_si128(hit, _mm_cmpeq_epi8(v, byte(0xe2)));
            }
            if style == Style::ActiveSupportHtmlSafe {
                let html = _mm_or_si128(_mm_cmpeq_epi8(v, byte(b'<')), _mm_cmpeq_epi8(v, byte(b'>')));
                hit = _mm_or_si128(hit, _mm_or_si128(html, _mm_cmpeq_epi8(v, byte(b'&'))));
            }
            if _mm_movemask_epi8(hit) != 0 {
                break;
            }
            i += 16;
        }
    }
    i
}

#[cfg(not(target_arch = "x86_64"))]
fn skip_plain(_bytes: &[u8], i: usize, _style: Style) -> usize {
    i
}

#[cfg(test)]
mod tests {
    use super::{escape_into, Style};

    fn escaped(text: &str, style: Style) -> String {
        let mut out = String::new();
        escape_into(&mut out, text, style);
        out
    }

    #[test]
    fn escapes_like_the_json_gem() {
        assert_eq!(escaped("a\"b\\c/d", Style::JsonGem), r#""a\"b\\c/d""#);
        assert_eq!(escaped("\u{1}\u{1f}\t\u{8}\u{c}\n\r\u{7f}", Style::JsonGem), "\"\\u0001\\u001f\\t\\b\\f\\n\\r\u{7f}\"");
        assert_eq!(escaped("é\u{2028}<>&", Style::JsonGem), "\"é\u{2028}<>&\"");
    }

    #[test]
    fn finds_special_bytes_anywhere_in_long_text() {
        for style in [Style::JsonGem, Style::ActiveSupport, Style::ActiveSupportHtmlSafe] {
            for special in ["\"", "\\", "\n", "\u{1}", "\u{1f}", "<", "&", "\u{2028}", "é"] {
                for at in 0..40 {
                    let text = format!("{}{special}{}", "x".repeat(at), "y".repeat(40 - at));
                    let mut byte_wise = String::from("\"");
                    for c in text.chars() {
                        let mut one = String::new();
                        escape_into(&mut one, &c.to_string(), style);
                        byte_wise.push_str(&one[1..one.len() - 1]);
                    }
                    byte_wise.push('"');
                    assert_eq!(escaped(&text, style), byte_wise, "{special:?} at {at} ({style:?})");
                }
            }
        }
    }

    #[test]
    fn escapes_like_active_support() {
        assert_eq!(escaped("\u{2028}\u{2029}<&>", Style::ActiveSupport), "\"\\u2028\\u2029<&>\"");
        assert_eq!(escaped("\u{2028}<&>", Style::ActiveSupportHtmlSafe), "\"\\u2028\\u003c\\u0026\\u003e\"");
    }
}
