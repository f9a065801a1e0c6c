//! The fast path of Event.build (lib/jetstream_bridge/event.rb): reads the publish
//! arguments straight from the Ruby Hash, encodes the payload (json_encode.rs) and builds
//! the envelope in one call. It takes only input Ruby would accept as it is (UTF-8
//! Strings, Symbol or String keys, Integers, nil); for anything else, every invalid
//! argument included, it returns None and Ruby's Event.build does the work and raises
//! the errors, so the rules and messages live in one place.

use magnus::{prelude::*, r_hash::ForEach, Fixnum, RArray, RHash, RString, Ruby, Symbol, Value};

use crate::envelope::{self, EnvelopeInput};
use crate::json_encode::{self, Style};

/// The publish arguments, by name (Event::FIELDS); later duplicates win, as in Ruby.
#[derive(Default)]
struct Fields {
    resource_type: Option<Value>,
    event_type: Option<Value>,
    payload: Option<Value>,
    event_id: Option<Value>,
    trace_id: Option<Value>,
    occurred_at: Option<Value>,
    subject: Option<Value>,
    producer: Option<Value>,
    resource_id: Option<Value>,
    schema_version: Option<Value>,
}

/// Longest event_id (Event::MAX_EVENT_ID_BYTES).
const MAX_EVENT_ID_BYTES: usize = 1024;

/// [subject, event_id, json], or None when Ruby must build the event.
pub fn build(ruby: &Ruby, args: RHash, default_subject: RString, app_name: RString, style: Style) -> Option<RArray> {
    let fields = read_fields(args)?;
    let event_type = text(ruby, fields.event_type)?.filter(|t| !blank(t))?;
    match fields.schema_version {
        None => {}
        Some(v) if v.is_nil() || Fixnum::from_value(v).is_some_and(|n| n.to_i64() == 1) => {}
        Some(v) if text(ruby, Some(v)) == Some(Some("1".to_string())) => {}
        Some(_) => return None,
    }
    let resource_type = match text(ruby, fields.resource_type)?.filter(|t| !blank(t)) {
        Some(given) => Some(given),
        // "user.created" names its resource; otherwise "event" (as Event.build).
        None => match event_type.split_once('.') {
            Some((first, _)) if !blank(first) => Some(first.to_string()),
            Some(_) => None,
            None => Some("event".to_string()),
        },
    };
    let payload = fields.payload;
    let payload_json = match payload {
        Some(p) => json_encode::encode(ruby, p, style)?,
        None => "{}".to_string(),
    };
    let subject = match fields.subject.filter(|s| s.to_bool()) {
        Some(given) => {
            let given = text(ruby, Some(given))??;
            crate::subjects::validate_publish_subject(&given).ok()?;
            Some(given)
        }
        None => None,
    };
    let event_id = match text(ruby, fields.event_id)? {
        // Ruby checks these (control characters: [[:cntrl:]], wider than ASCII's).
        Some(id) if id.len() > MAX_EVENT_ID_BYTES || !id.is_ascii() || id.bytes().any(|b| b < 0x20 || b == 0x7f) => return None,
        Some(id) if blank(&id) => None,
        id => id,
    };
    let producer = match fields.producer.filter(|p| p.to_bool()) {
        Some(p) => text(ruby, Some(p))??,
        None => text(ruby, Some(app_name.as_value()))??,
    };
    let resource_id = match fields.resource_id.filter(|r| r.to_bool()) {
        Some(r) => id_text(ruby, r)?,
        None => payload_id(ruby, payload)?,
    }
    .filter(|id| !blank(id));
    if fields.occurred_at.is_some_and(|t| !t.is_nil()) {
        return None; // a Time or an ISO-8601 String: Ruby converts and checks it
    }
    let trace_id = text(ruby, fields.trace_id)?.filter(|t| !blank(t));
    let (event_id, json) = envelope::build(&EnvelopeInput {
        event_id,
        event_type,
        producer,
        resource_type,
        resource_id,
        occurred_at: None,
        trace_id,
        payload_json,
    })
    .ok()?;
    let out = ruby.ary_new_capa(3);
    match subject {
        Some(s) => out.push(s).ok()?,
        None => out.push(default_subject).ok()?,
    }
    out.push(event_id).ok()?;
    out.push(json).ok()?;
    Some(out)
}

fn read_fields(args: RHash) -> Option<Fields> {
    let mut fields = Fields::default();
    let mut unknown = false;
    args.foreach(|key: Value, value: Value| {
        let name = match Symbol::from_value(key) {
            Some(sym) => sym.name().map(|n| n.into_owned()).ok(),
            None => RString::from_value(key).and_then(|s| s.to_string().ok()),
        };
        let slot = match name.as_deref() {
            Some("resource_type") => &mut fields.resource_type,
            Some("event_type") => &mut fields.event_type,
            Some("payload") => &mut fields.payload,
            Some("event_id") => &mut fields.event_id,
            Some("trace_id") => &mut fields.trace_id,
            Some("occurred_at") => &mut fields.occurred_at,
            Some("subject") => &mut fields.subject,
            Some("producer") => &mut fields.producer,
            Some("resource_id") => &mut fields.resource_id,
            Some("schema_version") => &mut fields.schema_version,
            _ => {
                unknown = true; // Ruby raises naming it
                return Ok(ForEach::Stop);
            }
        };
        *slot = Some(value);
        Ok(ForEach::Continue)
    })
    .ok()?;
    (!unknown).then_some(fields)
}

/// A text argument: Some(None) for nil or absent, Some(Some(text)) for a UTF-8 String of
/// class String, None (Ruby decides) for anything else.
fn text(ruby: &Ruby, value: Option<Value>) -> Option<Option<String>> {
    let Some(value) = value.filter(|v| !v.is_nil()) else { return Some(None) };
    let s = json_encode::exact::<RString>(value, ruby.class_string())?;
    if s.enc_get() != ruby.utf8_encindex() {
        return None;
    }
    std::str::from_utf8(unsafe { s.as_slice() }).ok().map(|t| Some(t.to_string()))
}

/// A resource id as Ruby's `to_s` writes it: Strings and Integers only.
fn id_text(ruby: &Ruby, value: Value) -> Option<Option<String>> {
    match Fixnum::from_value(value) {
        Some(n) => Some(Some(n.to_i64().to_string())),
        None => text(ruby, Some(value)),
    }
}

/// payload[:id] || payload["id"], for a plain Hash payload.
fn payload_id(ruby: &Ruby, payload: Option<Value>) -> Option<Option<String>> {
    let Some(hash) = payload.and_then(RHash::from_value) else { return Some(None) };
    let by_symbol: Value = hash.aref(ruby.sym_new("id")).ok()?;
    let id = if by_symbol.to_bool() { by_symbol } else { hash.aref("id").ok()? };
    if !id.to_bool() {
        return if id.is_nil() { Some(None) } else { None };
    }
    id_text(ruby, id)
}

/// Ruby's `to_s.strip.empty?`: only whitespace and NUL.
fn blank(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, 0 | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' '))
}
