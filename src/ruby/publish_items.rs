//! The events of a publish call (`Client#publish_event`, `#publish_events`), each either
//! publish arguments (a Hash the core builds, publish_args.rs) or an event built before,
//! a Native::BuiltEvent (Ruby's Event.build, an outbox row, a dead letter replayed). One
//! builder: the core's; the callers differ only in where the built event goes.

use bytes::Bytes;
use magnus::{Error, RHash, RString, Ruby, Value};

use crate::errors::{BridgeError, Kind};
use crate::publish::json_string::Style;
use crate::publish::publisher::Outgoing;
use crate::ruby::convert::header_map;
use crate::ruby::publish_args::{self, Built};
use crate::ruby::types::{self, BUILT_EVENT, EVENT_DEFAULTS};

/// What the core fills in for what publish arguments leave out (a Native::EventDefaults).
pub struct Defaults {
    pub subject: RString,
    pub producer: RString,
    /// None: an app's own JSON encoder is in use, so Ruby builds every event.
    pub style: Option<Style>,
}

pub fn defaults(ruby: &Ruby, value: Value) -> Result<Defaults, Error> {
    let fields = EVENT_DEFAULTS.read(ruby, value)?;
    Ok(Defaults { subject: fields.get("subject")?, producer: fields.get("producer")?, style: types::json_style(ruby, fields.get("json_style")?)? })
}

/// One event of a call, ready to send.
pub enum Event {
    /// Built here from publish arguments.
    Built(Built),
    /// A Native::BuiltEvent as given (`value`); its `json` is read while the GVL is held.
    Given { value: Value, subject: String, event_id: String, json: RString, headers: Option<async_nats::HeaderMap> },
}

/// The event `value` names, or None when Ruby must build it (publish arguments the core
/// does not take as they are, or no JSON style, see publish_args.rs; anything but a Hash
/// or a BuiltEvent, which Ruby rejects naming it).
pub fn read(ruby: &Ruby, value: Value, defaults: &Defaults) -> Result<Option<Event>, Error> {
    if let Some(args) = RHash::from_value(value) {
        let Some(style) = defaults.style else { return Ok(None) };
        return Ok(publish_args::build(ruby, args, defaults.producer, style).map(Event::Built));
    }
    if !BUILT_EVENT.is(ruby, value) {
        return Ok(None);
    }
    let fields = BUILT_EVENT.read(ruby, value)?;
    let event_id: String = fields.get("event_id")?;
    check_msg_id(&event_id)?;
    let headers = fields.get::<Option<RHash>>("headers")?.map(header_map).transpose()?;
    Ok(Some(Event::Given { value, subject: fields.get("subject")?, event_id, json: fields.get("json")?, headers }))
}

impl Event {
    pub fn event_id(&self) -> &str {
        match self {
            Event::Built(b) => &b.event_id,
            Event::Given { event_id, .. } => event_id,
        }
    }

    /// The subject; None for the default (publish) subject.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Event::Built(b) => b.subject.as_deref(),
            Event::Given { subject, .. } => Some(subject),
        }
    }

    /// The body. Safety of the Given case: the String is alive (its BuiltEvent is an
    /// argument of the call) and nothing runs Ruby while the slice is used.
    pub fn json(&self) -> &[u8] {
        match self {
            Event::Built(b) => b.json.as_bytes(),
            Event::Given { json, .. } => unsafe { json.as_slice() },
        }
    }

    pub fn headers(&self) -> Option<&async_nats::HeaderMap> {
        match self {
            Event::Built(_) => None,
            Event::Given { headers, .. } => headers.as_ref(),
        }
    }

    /// The message to send (a given body is copied: Ruby may move or free it once the GVL
    /// is released), and the event as a Native::BuiltEvent for a failed attempt to carry
    /// (Error#unsent_event): the one given, or None to be made from the message.
    pub fn into_outgoing(self, default_subject: RString) -> Result<(Outgoing, Option<Value>), Error> {
        Ok(match self {
            Event::Built(b) => {
                let subject = match b.subject {
                    Some(s) => s,
                    None => default_subject.to_string()?,
                };
                (Outgoing { subject, body: Bytes::from(b.json), msg_id: b.event_id, headers: None }, None)
            }
            Event::Given { value, subject, event_id, json, headers } => {
                let body = Bytes::copy_from_slice(unsafe { json.as_slice() });
                (Outgoing { subject, body, msg_id: event_id, headers }, Some(value))
            }
        })
    }
}

/// A header value is one line: async-nats panics on CR/LF in one.
fn check_msg_id(msg_id: &str) -> Result<(), Error> {
    if msg_id.is_empty() || msg_id.contains(['\r', '\n']) {
        return Err(BridgeError::new(Kind::InvalidArgument, "event_id must be one non-empty line (it becomes the Nats-Msg-Id header)").into_ruby());
    }
    Ok(())
}
