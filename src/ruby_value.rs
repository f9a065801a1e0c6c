//! serde_json values to Ruby objects (string keys), built with the GVL held after the
//! JSON was parsed and validated without it.
//!
//! Hot path of consuming: calls the C API directly (one `protect` around the whole tree
//! rather than one per insert) and uses interned, frozen keys, which Hash#[]= stores
//! without copying.

use magnus::{rb_sys::FromRawValue, Error, Value};
use rb_sys::{
    rb_ary_new_capa, rb_ary_push, rb_enc_interned_str, rb_float_new, rb_hash_aset, rb_hash_new,
    rb_int2inum, rb_uint2inum, rb_utf8_encoding, rb_utf8_str_new, Qfalse, Qnil, Qtrue, VALUE,
};
use serde_json::Value as Json;

/// Converts a parsed JSON value into the equivalent Ruby object.
pub fn to_ruby(value: &Json) -> Result<Value, Error> {
    let raw = magnus::rb_sys::protect(|| unsafe { build(value) })?;
    Ok(unsafe { Value::from_raw(raw) })
}

/// A frozen, deduplicated Ruby string (every message of a subject shares one object).
pub fn interned(text: &str) -> Result<Value, Error> {
    let raw = magnus::rb_sys::protect(|| unsafe {
        rb_enc_interned_str(text.as_ptr() as *const _, text.len() as _, rb_utf8_encoding())
    })?;
    Ok(unsafe { Value::from_raw(raw) })
}

unsafe fn build(value: &Json) -> VALUE {
    match value {
        Json::Null => Qnil as VALUE,
        Json::Bool(true) => Qtrue as VALUE,
        Json::Bool(false) => Qfalse as VALUE,
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                rb_int2inum(i as isize)
            } else if let Some(u) = n.as_u64() {
                rb_uint2inum(u as usize)
            } else {
                rb_float_new(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => rb_utf8_str_new(s.as_ptr() as *const _, s.len() as _),
        Json::Array(items) => {
            let array = rb_ary_new_capa(items.len() as _);
            for item in items {
                rb_ary_push(array, build(item));
            }
            array
        }
        Json::Object(map) => {
            let hash = rb_hash_new();
            for (k, v) in map {
                let key = rb_enc_interned_str(k.as_ptr() as *const _, k.len() as _, rb_utf8_encoding());
                rb_hash_aset(hash, key, build(v));
            }
            hash
        }
    }
}
