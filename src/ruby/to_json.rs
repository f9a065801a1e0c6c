//! Event payloads to JSON, byte for byte as Ruby would write them, for the plain values
//! payloads are made of (Hash, Array, String, Symbol, Integer, Float, true, false, nil).
//! Anything else (a Time, a BigDecimal, a subclass, a Bignum, NaN, invalid UTF-8, nesting
//! past MAX_DEPTH) returns None and Ruby encodes the whole payload instead, with its own
//! conversions and error messages. Ruby's generators spend most of a publish's Ruby time
//! on a 1 KB payload; this takes a fraction of it.

use std::fmt::Write;

use magnus::{
    encoding::{Coderange, EncodingCapable},
    prelude::*,
    rb_sys::{AsRawValue, FromRawValue},
    r_hash::ForEach,
    Error, Fixnum, Float, RArray, RHash, RString, Ruby, Symbol, Value,
};

/// Deepest nesting Ruby's JSON.generate allows (and the bridge's own check with
/// ActiveSupport): past it Ruby raises the error.
const MAX_DEPTH: usize = 100;

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

/// The JSON text of `value`, or None when Ruby must encode it.
pub fn encode(ruby: &Ruby, value: Value, style: Style) -> Option<String> {
    let mut out = String::with_capacity(256);
    encode_into(ruby, value, style, &mut out).then_some(out)
}

/// Appends the JSON text of `value` to `out`; false when Ruby must encode it (`out` then
/// ends with part of it).
pub fn encode_into(ruby: &Ruby, value: Value, style: Style, out: &mut String) -> bool {
    Encoder { ruby, style, out }.value(value, 0).is_ok()
}

/// Why the encoder gave up (Ruby takes over); never shown.
struct GiveUp;

struct Encoder<'a> {
    ruby: &'a Ruby,
    style: Style,
    out: &'a mut String,
}

impl Encoder<'_> {
    fn value(&mut self, value: Value, depth: usize) -> Result<(), GiveUp> {
        let ruby = self.ruby;
        if value.is_nil() {
            self.out.push_str("null");
        } else if value.as_raw() == ruby.qtrue().as_raw() {
            self.out.push_str("true");
        } else if value.as_raw() == ruby.qfalse().as_raw() {
            self.out.push_str("false");
        } else if let Some(n) = Fixnum::from_value(value) {
            let _ = write!(self.out, "{}", n.to_i64());
        } else if let Some(s) = exact::<RString>(value, ruby.class_string()) {
            self.string(s)?;
        } else if let Some(sym) = Symbol::from_value(value) {
            self.string(symbol_name(sym))?;
        } else if let Some(hash) = exact::<RHash>(value, ruby.class_hash()) {
            self.hash(hash, depth + 1)?;
        } else if let Some(array) = exact::<RArray>(value, ruby.class_array()) {
            self.array(array, depth + 1)?;
        } else if let Some(f) = Float::from_value(value) {
            // Ruby writes floats with Float#to_s (1.0e+20, 0.1); NaN and Infinity raise there.
            if !f.to_f64().is_finite() {
                return Err(GiveUp);
            }
            let text: String = value.funcall("to_s", ()).map_err(|_: Error| GiveUp)?;
            self.out.push_str(&text);
        } else {
            return Err(GiveUp);
        }
        Ok(())
    }

    fn hash(&mut self, hash: RHash, depth: usize) -> Result<(), GiveUp> {
        if depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        self.out.push('{');
        let mut first = true;
        let mut gave_up = false;
        let result = hash.foreach(|key: Value, value: Value| {
            if !first {
                self.out.push(',');
            }
            first = false;
            let ok = self.key(key).and_then(|()| {
                self.out.push(':');
                self.value(value, depth)
            });
            if ok.is_err() {
                gave_up = true;
                return Ok(ForEach::Stop);
            }
            Ok(ForEach::Continue)
        });
        if gave_up || result.is_err() {
            return Err(GiveUp);
        }
        self.out.push('}');
        Ok(())
    }

    fn key(&mut self, key: Value) -> Result<(), GiveUp> {
        if let Some(s) = exact::<RString>(key, self.ruby.class_string()) {
            self.string(s)
        } else if let Some(sym) = Symbol::from_value(key) {
            self.string(symbol_name(sym))
        } else {
            Err(GiveUp)
        }
    }

    fn array(&mut self, array: RArray, depth: usize) -> Result<(), GiveUp> {
        if depth > MAX_DEPTH {
            return Err(GiveUp);
        }
        self.out.push('[');
        // By index, not by slice: encoding a Float calls Ruby, which may run the GC.
        for i in 0..array.len() {
            if i > 0 {
                self.out.push(',');
            }
            let item: Value = array.entry(i as isize).map_err(|_| GiveUp)?;
            self.value(item, depth)?;
        }
        self.out.push(']');
        Ok(())
    }

    /// A Ruby String: only UTF-8 (or ASCII-only US-ASCII) text; Ruby converts or rejects
    /// the rest.
    fn string(&mut self, s: RString) -> Result<(), GiveUp> {
        let text = utf8_text(self.ruby, &s).ok_or(GiveUp)?;
        // Borrowed from the Ruby string: nothing below calls Ruby.
        self.text(text);
        Ok(())
    }

    fn text(&mut self, text: &str) {
        escape_into(self.out, text, self.style);
    }
}

/// The text of a UTF-8 (or ASCII-only US-ASCII) Ruby string; None for other encodings
/// and invalid bytes. Validity comes from Ruby's cached coderange, so a string already
/// checked (a literal, one published before) is not scanned again. The &str borrows the
/// string: use it before anything calls Ruby.
pub(crate) fn utf8_text<'a>(ruby: &Ruby, s: &'a RString) -> Option<&'a str> {
    let encoding = s.enc_get();
    let valid = match s.enc_coderange_scan() {
        Coderange::SevenBit => encoding == ruby.utf8_encindex() || encoding == ruby.usascii_encindex(),
        Coderange::Valid => encoding == ruby.utf8_encindex(),
        _ => false,
    };
    // Safety: Ruby found these bytes valid in UTF-8 (or in ASCII, a subset).
    valid.then(|| unsafe { std::str::from_utf8_unchecked(s.as_slice()) })
}

/// A Symbol's name as the String Symbol#to_s holds, every byte of it (Symbol#name's C
/// string would end at an embedded NUL), in the Symbol's own encoding.
fn symbol_name(sym: Symbol) -> RString {
    // Safety: rb_sym2str returns the Symbol's frozen name String, which the Symbol keeps.
    let raw = unsafe { rb_sys::rb_sym2str(sym.as_raw()) };
    RString::from_value(unsafe { Value::from_raw(raw) }).expect("rb_sym2str returns a String")
}

/// `value` as T when its class is exactly `class` (subclasses may define their own to_json).
pub(crate) fn exact<T: magnus::TryConvert>(value: Value, class: magnus::RClass) -> Option<T> {
    if value.class().as_raw() != class.as_raw() {
        return None;
    }
    T::try_convert(value).ok()
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
