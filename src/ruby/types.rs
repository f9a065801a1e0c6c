//! The named values that cross the boundary: the Struct classes of
//! lib/jetstream_bridge/native_types.rb, looked up once when the extension loads (`load`),
//! their members checked against the order this file writes and reads them in. Results
//! are built as those Structs (`Shape::build`), options read from them by member
//! (`Shape::read`); the JSON styles are Symbols.

use std::sync::OnceLock;

use magnus::{gc, prelude::*, rb_sys::AsRawValue, rb_sys::FromRawValue, value::LazyId, value::Opaque, Error, RClass, RModule, RStruct, Ruby, Symbol, Value};

use crate::publish::json_string::Style;

/// A Struct class of native_types.rb with N members, in the order of `members`.
pub struct Shape<const N: usize> {
    name: &'static str,
    members: [&'static str; N],
    class: OnceLock<Opaque<RClass>>,
}

impl<const N: usize> Shape<N> {
    const fn new(name: &'static str, members: [&'static str; N]) -> Self {
        Shape { name, members, class: OnceLock::new() }
    }

    /// Looks the class up under `native` and checks its members; kept marked for good.
    fn load(&self, ruby: &Ruby, native: RModule) -> Result<(), Error> {
        let class: RClass = native.const_get(self.name).map_err(|_| {
            Error::new(ruby.exception_load_error(), format!("JetstreamBridge::Native::{} is not defined: require jetstream_bridge/native_types before the core", self.name))
        })?;
        let members: magnus::RArray = class.funcall("members", ())?;
        let names = members.into_iter().map(|m| Symbol::try_convert(m).and_then(|m| m.name().map(|n| n.into_owned()))).collect::<Result<Vec<_>, _>>()?;
        if names != self.members {
            return Err(Error::new(
                ruby.exception_load_error(),
                format!("JetstreamBridge::Native::{} has members {names:?}; the core reads and writes {:?}", self.name, self.members),
            ));
        }
        gc::register_mark_object(class);
        let _ = self.class.set(class.into());
        Ok(())
    }

    fn class(&self, ruby: &Ruby) -> RClass {
        ruby.get_inner(*self.class.get().expect("native types are loaded with the extension"))
    }

    /// A new instance with these member values, in the order of `members`. No Ruby method
    /// runs (no `initialize`): the members are set in place.
    pub fn build(&self, ruby: &Ruby, values: [Value; N]) -> Value {
        let class = self.class(ruby);
        // Safety: a fresh, unfrozen instance of a Struct class whose size load() checked to be
        // N: rb_struct_aset cannot raise. The values live on this stack frame (the GC sees them).
        unsafe {
            let instance = rb_sys::rb_struct_alloc_noinit(class.as_raw());
            for (i, value) in values.iter().enumerate() {
                rb_sys::rb_struct_aset(instance, fixnum(i), value.as_raw());
            }
            Value::from_raw(instance)
        }
    }

    /// Whether `value` is an instance of this class (a subclass too).
    pub fn is(&self, ruby: &Ruby, value: Value) -> bool {
        RStruct::from_value(value).is_some() && value.is_kind_of(self.class(ruby))
    }

    /// `value` as an instance of this class (a subclass too); TypeError otherwise.
    pub fn read(&'static self, ruby: &Ruby, value: Value) -> Result<Fields<N>, Error> {
        let class = self.class(ruby);
        match RStruct::from_value(value) {
            Some(s) if value.is_kind_of(class) => Ok(Fields { shape: self, value: s }),
            _ => Err(Error::new(
                ruby.exception_type_error(),
                format!("expected a JetstreamBridge::Native::{}, got {}", self.name, unsafe { value.classname() }),
            )),
        }
    }
}

/// A Struct instance read by member name (checked against the shape's members).
pub struct Fields<const N: usize> {
    shape: &'static Shape<N>,
    value: RStruct,
}

impl<const N: usize> Fields<N> {
    pub fn get<T: magnus::TryConvert>(&self, member: &str) -> Result<T, Error> {
        let index = self.shape.members.iter().position(|m| *m == member).expect("a member of the shape");
        // Through rb_struct_aref, not RStruct::get: magnus 0.8 reads an embedded struct's
        // length from Ruby 3.1's flag bits, which Ruby 3.3 lays out otherwise ("offset 2 too
        // large for struct(size:2)" for a 14-member struct).
        self.value.aref::<_, T>(index).map_err(|e| {
            let ruby = Ruby::get_with(self.value);
            Error::new(ruby.exception_type_error(), format!("JetstreamBridge::Native::{}#{member}: {e}", self.shape.name))
        })
    }
}

fn fixnum(i: usize) -> rb_sys::VALUE {
    ((i as rb_sys::VALUE) << 1) | 1
}

// --- Results the core builds ---------------------------------------------------------------

pub static MESSAGE: Shape<7> = Shape::new("Message", ["id", "subject", "event", "deliveries", "decode_error", "msg_id", "stream_seq"]);
pub static FAILURE: Shape<3> = Shape::new("Failure", ["index", "error", "message"]);
pub static PUBLISHED: Shape<6> = Shape::new("Published", ["stream", "seq", "duplicate", "event_id", "subject", "attempts"]);
pub static BATCH_OUTCOME: Shape<3> = Shape::new("BatchOutcome", ["event_ids", "duplicates", "failures"]);
pub static BUILT_EVENT: Shape<4> = Shape::new("BuiltEvent", ["subject", "event_id", "json", "headers"]);
pub static ENVELOPE: Shape<2> = Shape::new("Envelope", ["event_id", "json"]);
pub static STORED_MESSAGE: Shape<5> = Shape::new("StoredMessage", ["seq", "subject", "headers", "body", "stored_at"]);
pub static CONNECTION_EVENT: Shape<4> = Shape::new("ConnectionEvent", ["level", "kind", "message", "at"]);
pub static DRAINED_EVENTS: Shape<2> = Shape::new("DrainedEvents", ["events", "dropped"]);
pub static DURABLE_REPORT: Shape<2> = Shape::new("DurableReport", ["action", "changes"]);

// --- Options Ruby fills --------------------------------------------------------------------

pub static CONNECT_OPTIONS: Shape<14> = Shape::new(
    "ConnectOptions",
    [
        "urls", "name", "user", "password", "token", "nkey_seed", "credentials_file", "tls_ca_file", "tls_cert_file",
        "tls_key_file", "connect_timeout_ms", "request_timeout_ms", "stream", "api",
    ],
);
pub static STREAM_SPEC: Shape<6> = Shape::new("StreamSpec", ["name", "subjects", "duplicate_window_ms", "replicas", "retention", "limits"]);
pub static STREAM_LIMITS: Shape<3> = Shape::new("StreamLimits", ["max_age_ms", "max_bytes", "max_msgs"]);
pub static LOOP_OPTIONS: Shape<16> = Shape::new(
    "LoopOptions",
    [
        "stream", "durable", "filter_subject", "ack_wait_ms", "max_deliver", "max_ack_pending", "batch_size", "dlq_subject",
        "stream_spec", "provision", "max_handler_time_ms", "verify", "concurrency", "consumer_mode", "delivery_subject",
        "deliver_group",
    ],
);
pub static EVENT_DEFAULTS: Shape<3> = Shape::new("EventDefaults", ["subject", "producer", "json_style"]);

/// Looks up every class of native_types.rb; the extension fails to load when one is
/// missing or its members differ from the core's.
pub fn load(ruby: &Ruby, native: RModule) -> Result<(), Error> {
    MESSAGE.load(ruby, native)?;
    FAILURE.load(ruby, native)?;
    PUBLISHED.load(ruby, native)?;
    BATCH_OUTCOME.load(ruby, native)?;
    BUILT_EVENT.load(ruby, native)?;
    ENVELOPE.load(ruby, native)?;
    STORED_MESSAGE.load(ruby, native)?;
    CONNECTION_EVENT.load(ruby, native)?;
    DRAINED_EVENTS.load(ruby, native)?;
    DURABLE_REPORT.load(ruby, native)?;
    CONNECT_OPTIONS.load(ruby, native)?;
    STREAM_SPEC.load(ruby, native)?;
    STREAM_LIMITS.load(ruby, native)?;
    LOOP_OPTIONS.load(ruby, native)?;
    EVENT_DEFAULTS.load(ruby, native)?;
    Ok(())
}

// --- Symbols -------------------------------------------------------------------------------

static JSON_GEM: LazyId = LazyId::new("json_gem");
static ACTIVE_SUPPORT: LazyId = LazyId::new("active_support");
static ACTIVE_SUPPORT_HTML_SAFE: LazyId = LazyId::new("active_support_html_safe");

/// A JSON style (Native::JSON_STYLES): whose generator the core's JSON must match; nil
/// (None) when the core cannot match it (an app's own encoder): Ruby encodes then.
pub fn json_style(ruby: &Ruby, style: Value) -> Result<Option<Style>, Error> {
    match Symbol::from_value(style) {
        _ if style.is_nil() => Ok(None),
        Some(s) if s == JSON_GEM => Ok(Some(Style::JsonGem)),
        Some(s) if s == ACTIVE_SUPPORT => Ok(Some(Style::ActiveSupport)),
        Some(s) if s == ACTIVE_SUPPORT_HTML_SAFE => Ok(Some(Style::ActiveSupportHtmlSafe)),
        _ => Err(Error::new(
            ruby.exception_arg_error(),
            format!("JSON style {}: one of Native::JSON_STYLES (:json_gem, :active_support, :active_support_html_safe) or nil", style.inspect()),
        )),
    }
}
