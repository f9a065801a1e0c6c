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

use crate::publish::json_string::{escape_into, Style};

/// Deepest nesting Ruby's JSON.generate allows (and the bridge's own check with
/// ActiveSupport): past it Ruby raises the error.
const MAX_DEPTH: usize = 100;

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
