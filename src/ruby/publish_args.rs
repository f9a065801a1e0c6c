//! The fast path of Event.build (lib/jetstream_bridge/event.rb): reads the publish
//! arguments straight from the Ruby Hash, encodes the payload (to_json.rs) and builds
//! the envelope in one call. It takes only input Ruby would accept as it is (UTF-8
//! Strings, Symbol or String keys, Integers, nil); for anything else, every invalid
//! argument included, it returns None and Ruby's Event.build does the work and raises
//! the errors, so the rules and messages live in one place.

use magnus::{prelude::*, r_hash::ForEach, value::LazyId, Fixnum, IntoValue, RHash, RString, Ruby, Symbol, Value};

use crate::publish::envelope::{self, EnvelopeInput};
use crate::publish::json_string::Style;
use crate::ruby::to_json;
use crate::ruby::types::BUILT_EVENT;

/// The publish arguments (Event::FIELDS), in this order.
const NAMES: [&str; 10] = [
    "resource_type", "event_type", "payload", "event_id", "trace_id", "occurred_at", "subject", "producer",
    "resource_id", "schema_version",
];
static IDS: [LazyId; 10] = [
    LazyId::new("resource_type"), LazyId::new("event_type"), LazyId::new("payload"), LazyId::new("event_id"),
    LazyId::new("trace_id"), LazyId::new("occurred_at"), LazyId::new("subject"), LazyId::new("producer"),
    LazyId::new("resource_id"), LazyId::new("schema_version"),
];

/// The arguments given, by name; later duplicates win, as in Ruby.
#[derive(Default)]
struct Fields([Option<Value>; 10]);

impl Fields {
    fn resource_type(&self) -> Option<Value> { self.0[0] }
    fn event_type(&self) -> Option<Value> { self.0[1] }
    fn payload(&self) -> Option<Value> { self.0[2] }
    fn event_id(&self) -> Option<Value> { self.0[3] }
    fn trace_id(&self) -> Option<Value> { self.0[4] }
    fn occurred_at(&self) -> Option<Value> { self.0[5] }
    fn subject(&self) -> Option<Value> { self.0[6] }
    fn producer(&self) -> Option<Value> { self.0[7] }
    fn resource_id(&self) -> Option<Value> { self.0[8] }
    fn schema_version(&self) -> Option<Value> { self.0[9] }
}

/// Room reserved for the payload's JSON (a larger one grows the buffer).
const PAYLOAD_CAPACITY: usize = 1024;

/// Longest event_id (Event::MAX_EVENT_ID_BYTES).
const MAX_EVENT_ID_BYTES: usize = 1024;

/// An event built from the publish arguments, still on the Rust side.
pub struct Built {
    /// The `subject:` argument; None for the default (publish) subject.
    pub subject: Option<String>,
    pub event_id: String,
    pub json: String,
}

impl Built {
    /// A Native::BuiltEvent (no custom headers), as Event.build returns them.
    pub fn into_ruby(self, ruby: &Ruby, default_subject: RString) -> Value {
        let subject = match self.subject {
            Some(s) => s.into_value_with(ruby),
            None => default_subject.as_value(),
        };
        BUILT_EVENT.build(ruby, [subject, self.event_id.into_value_with(ruby), self.json.into_value_with(ruby), ruby.qnil().as_value()])
    }
}

/// The event, or None when Ruby must build it.
pub fn build(ruby: &Ruby, args: RHash, app_name: RString, style: Style) -> Option<Built> {
    let fields = read_fields(args)?;
    if fields.occurred_at().is_some_and(|t| !t.is_nil()) {
        return None; // a Time or an ISO-8601 String: Ruby converts and checks it
    }
    let event_type = text(ruby, fields.event_type())?.filter(|t| !blank(t))?;
    match fields.schema_version() {
        None => {}
        Some(v) if v.is_nil() || Fixnum::from_value(v).is_some_and(|n| n.to_i64() == 1) => {}
        Some(v) if text(ruby, Some(v)) == Some(Some("1".to_string())) => {}
        Some(_) => return None,
    }
    let resource_type = match text(ruby, fields.resource_type())?.filter(|t| !blank(t)) {
        Some(given) => Some(given),
        // "user.created" names its resource; otherwise (".created" too) "event" (as Event.build).
        None => match event_type.split_once('.') {
            Some((first, _)) if !blank(first) => Some(first.to_string()),
            _ => Some("event".to_string()),
        },
    };
    let payload = fields.payload();
    let subject = match fields.subject().filter(|s| s.to_bool()) {
        Some(given) => {
            let given = text(ruby, Some(given))??;
            crate::topology::subjects::validate_publish_subject(&given).ok()?;
            Some(given)
        }
        None => None,
    };
    let event_id = match text(ruby, fields.event_id())? {
        // Ruby checks these (control characters: [[:cntrl:]], wider than ASCII's).
        Some(id) if id.len() > MAX_EVENT_ID_BYTES || !id.is_ascii() || id.bytes().any(|b| b < 0x20 || b == 0x7f) => return None,
        Some(id) if blank(&id) => None,
        // Ruby rejects it: the server trims the Nats-Msg-Id value.
        Some(id) if id.starts_with(' ') || id.ends_with(' ') => return None,
        id => id,
    };
    let producer = match fields.producer().filter(|p| p.to_bool()) {
        Some(p) => text(ruby, Some(p))??,
        None => text(ruby, Some(app_name.as_value()))??,
    };
    let resource_id = match fields.resource_id().filter(|r| r.to_bool()) {
        Some(r) => id_text(ruby, r)?,
        None => payload_id(ruby, payload)?,
    }
    .filter(|id| !blank(id));
    let trace_id = text(ruby, fields.trace_id())?.filter(|t| !blank(t));
    let fields = EnvelopeInput { event_id, event_type, producer, resource_type, resource_id, occurred_at: None, trace_id };
    let (event_id, mut json) = envelope::head(&fields, PAYLOAD_CAPACITY).ok()?;
    // Encoded straight into the envelope: no second buffer, no copy.
    match payload {
        Some(p) => to_json::encode_into(ruby, p, style, &mut json).then_some(())?,
        None => json.push_str("{}"),
    }
    json.push('}');
    Some(Built { subject, event_id, json })
}

fn read_fields(args: RHash) -> Option<Fields> {
    let mut fields = Fields::default();
    let mut unknown = false;
    args.foreach(|key: Value, value: Value| {
        match field_index(key) {
            Some(i) => fields.0[i] = Some(value),
            None => {
                unknown = true; // Ruby raises naming it
                return Ok(ForEach::Stop);
            }
        }
        Ok(ForEach::Continue)
    })
    .ok()?;
    (!unknown).then_some(fields)
}

/// Which argument a Symbol or String key names (by interned id: no string is made).
fn field_index(key: Value) -> Option<usize> {
    if let Some(sym) = Symbol::from_value(key) {
        return IDS.iter().position(|id| sym == *id);
    }
    let name = RString::from_value(key)?;
    let bytes = unsafe { name.as_slice() };
    NAMES.iter().position(|n| n.as_bytes() == bytes)
}

/// A text argument: Some(None) for nil or absent, Some(Some(text)) for a UTF-8 String of
/// class String, None (Ruby decides) for anything else.
fn text(ruby: &Ruby, value: Option<Value>) -> Option<Option<String>> {
    let Some(value) = value.filter(|v| !v.is_nil()) else { return Some(None) };
    let s = to_json::exact::<RString>(value, ruby.class_string())?;
    if s.enc_get() != ruby.utf8_encindex() {
        return None;
    }
    to_json::utf8_text(ruby, &s).map(|t| Some(t.to_string()))
}

/// A resource id as Ruby's `to_s` writes it: Strings and Integers only.
fn id_text(ruby: &Ruby, value: Value) -> Option<Option<String>> {
    match Fixnum::from_value(value) {
        Some(n) => Some(Some(n.to_i64().to_string())),
        None => text(ruby, Some(value)),
    }
}

/// The payload's `:id` (else `"id"`) key, for a Hash payload. Only keys that exist count:
/// a lookup never runs the Hash's default proc (which could change the caller's Hash and
/// invent an id).
fn payload_id(ruby: &Ruby, payload: Option<Value>) -> Option<Option<String>> {
    let Some(hash) = payload.and_then(RHash::from_value) else { return Some(None) };
    let present = |key: Value| hash.get(key).filter(|v| v.to_bool());
    let Some(id) = present(ruby.sym_new("id").as_value()).or_else(|| present(ruby.str_new("id").as_value())) else {
        return Some(None);
    };
    id_text(ruby, id)
}

/// Ruby's `to_s.strip.empty?`: only whitespace and NUL.
fn blank(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, 0 | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' '))
}
