//! Message bodies (JSON) straight to Ruby objects (string keys), with the GVL held.
//!
//! Hot path of consuming: serde_json's parser drives a visitor that creates the Ruby
//! objects as it reads, so no intermediate JSON tree is built and dropped; it calls the
//! C API directly (one `protect` around the whole body rather than one per insert) and
//! uses interned, frozen keys, which a Hash stores without copying.

use std::fmt;

use magnus::{prelude::*, rb_sys::FromRawValue, Error, RHash, RModule, Ruby, Value};
use rb_sys::{
    rb_ary_new, rb_ary_push, rb_enc_interned_str, rb_float_new, rb_hash_bulk_insert, rb_hash_new, rb_int2inum,
    rb_uint2inum, rb_utf8_encoding, rb_utf8_str_new, Qfalse, Qnil, Qtrue, VALUE,
};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Parses an event body: Ok(Ok(Hash)) for a JSON object, Ok(Err(why)) when the body is
/// not JSON or not an object (the consumer dead-letters it with that reason), Err for a
/// Ruby exception raised while building.
pub fn parse_event(body: &[u8]) -> Result<std::result::Result<Value, String>, Error> {
    let starts_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !starts_object {
        // Not the hot path: a full parse, for the same limits and messages as an object's.
        return Ok(Err(match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(_) => "body is JSON but not an event envelope (expected an object)".to_string(),
            Err(e) => format!("body is not valid JSON: {e}"),
        }));
    }
    let mut outcome: std::result::Result<VALUE, serde_json::Error> = Err(serde::de::Error::custom(""));
    magnus::rb_sys::protect(|| {
        let mut parser = serde_json::Deserializer::from_slice(body);
        outcome = RubySeed.deserialize(&mut parser).and_then(|value| parser.end().map(|()| value));
        Qnil as VALUE
    })?;
    match outcome {
        Ok(raw) => Ok(Ok(unsafe { Value::from_raw(raw) })),
        Err(e) if needs_exact_numbers(&e) => parse_exactly(body),
        Err(e) => Ok(Err(format!("body is not valid JSON: {e}"))),
    }
}

/// Keys of an object inserted into its Hash at once (see visit_map).
const MAP_CHUNK: usize = 16;

/// Set by the visitor for a number it cannot make exactly (see visit_f64).
const INEXACT: &str = "integer beyond 64 bits";

/// A number serde_json cannot hold exactly: an integer beyond 64 bits (read as a float)
/// or a float beyond f64's range (an error). Rare: the whole body is then read again.
fn needs_exact_numbers(e: &serde_json::Error) -> bool {
    let message = e.to_string();
    message.starts_with(INEXACT) || message.starts_with("number out of range")
}

/// Ruby's own JSON.parse, which makes a Bignum of any integer and Infinity of a float
/// out of range: the consumer hands handlers what JSON.parse would, digit for digit.
fn parse_exactly(body: &[u8]) -> Result<std::result::Result<Value, String>, Error> {
    let ruby = Ruby::get().expect("called with the GVL");
    let json: RModule = ruby.class_object().const_get("JSON")?;
    let text = ruby.enc_str_new(body, ruby.utf8_encoding());
    match json.funcall::<_, _, Value>("parse", (text,)) {
        Ok(value) if RHash::from_value(value).is_some() => Ok(Ok(value)),
        Ok(_) => Ok(Err("body is JSON but not an event envelope (expected an object)".to_string())),
        Err(e) if e.is_kind_of(json.const_get::<_, magnus::ExceptionClass>("ParserError")?) || e.is_kind_of(json.const_get::<_, magnus::ExceptionClass>("NestingError")?) => {
            Ok(Err(format!("body is not valid JSON: {e}")))
        }
        Err(e) => Err(e),
    }
}

/// A frozen, deduplicated Ruby string (every message of a subject shares one object).
pub fn interned(text: &str) -> Result<Value, Error> {
    let raw = magnus::rb_sys::protect(|| unsafe { intern(text) })?;
    Ok(unsafe { Value::from_raw(raw) })
}

unsafe fn intern(text: &str) -> VALUE {
    rb_enc_interned_str(text.as_ptr() as *const _, text.len() as _, rb_utf8_encoding())
}

/// Builds any JSON value as the Ruby object JSON.parse would make.
struct RubySeed;

impl<'de> DeserializeSeed<'de> for RubySeed {
    type Value = VALUE;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<VALUE, D::Error> {
        deserializer.deserialize_any(RubyVisitor)
    }
}

/// Object keys: interned frozen strings.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = VALUE;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<VALUE, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = VALUE;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<VALUE, E> {
        Ok(unsafe { intern(key) })
    }
}

struct RubyVisitor;

// The VALUEs made here live on this thread's stack until they are attached to their
// parent, where Ruby's conservative GC finds them.
impl<'de> Visitor<'de> for RubyVisitor {
    type Value = VALUE;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<VALUE, E> {
        Ok(Qnil as VALUE)
    }

    fn visit_bool<E>(self, v: bool) -> Result<VALUE, E> {
        Ok(if v { Qtrue as VALUE } else { Qfalse as VALUE })
    }

    fn visit_i64<E>(self, v: i64) -> Result<VALUE, E> {
        Ok(unsafe { rb_int2inum(v as isize) })
    }

    fn visit_u64<E>(self, v: u64) -> Result<VALUE, E> {
        Ok(unsafe { rb_uint2inum(v as usize) })
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<VALUE, E> {
        // serde_json reads an integer beyond 64 bits as a float, rounded, and "-0" as -0.0
        // (JSON.parse: the Integer 0): give up, and the body is read exactly
        // (parse_exactly). A float written like that gives up too, harmlessly (JSON.parse
        // makes the same Float of it).
        let big_integer = v.is_finite() && v.fract() == 0.0 && v.abs() >= 9.223_372_036_854_775_808e18;
        if big_integer || (v == 0.0 && v.is_sign_negative()) {
            return Err(E::custom(INEXACT));
        }
        Ok(unsafe { rb_float_new(v) })
    }

    fn visit_str<E>(self, v: &str) -> Result<VALUE, E> {
        Ok(unsafe { rb_utf8_str_new(v.as_ptr() as *const _, v.len() as _) })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VALUE, A::Error> {
        let array = unsafe { rb_ary_new() };
        while let Some(item) = seq.next_element_seed(RubySeed)? {
            unsafe { rb_ary_push(array, item) };
        }
        Ok(array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VALUE, A::Error> {
        // Pairs are gathered here (on the stack, so the GC sees them: see above) and
        // inserted MAP_CHUNK at a time: the table is sized once for them, where one
        // insert at a time grows an object of nine or more keys from Ruby's 8-entry array
        // table to a hash table and rehashes it as it grows.
        let hash = unsafe { rb_hash_new() };
        let mut pairs = [Qnil as VALUE; MAP_CHUNK * 2];
        let mut len = 0;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value_seed(RubySeed)?;
            if len == pairs.len() {
                unsafe { rb_hash_bulk_insert(len as _, pairs.as_ptr(), hash) };
                len = 0;
            }
            pairs[len] = key;
            pairs[len + 1] = value;
            len += 2;
        }
        if len > 0 {
            // Like Hash#[]= for these keys (interned, frozen) and values: a repeated key's
            // last value wins, write barriers included (the VM builds hash literals so).
            unsafe { rb_hash_bulk_insert(len as _, pairs.as_ptr(), hash) };
        }
        Ok(hash)
    }
}
