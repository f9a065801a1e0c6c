//! Ruby arguments to the core's values, shared by the Native functions, Client and
//! Consumer.

use std::time::Duration;

use magnus::{prelude::*, value::LazyId, Error, RHash, Ruby, Symbol, Value};

use crate::errors::{BridgeError, Kind};
use crate::ruby::types::{Fields, LOOP_OPTIONS, STREAM_LIMITS, STREAM_SPEC};
use crate::topology::durable::{ConsumerSpec, PushDelivery};
use crate::topology::limits::{Limits, LimitsPolicy};
use crate::topology::stream::StreamSpec;

/// A Native::LoopOptions (Consumer#loop_options), read by member.
pub fn loop_options(ruby: &Ruby, opts: Value) -> Result<Fields<16>, Error> {
    LOOP_OPTIONS.read(ruby, opts)
}

/// The durable's desired config from a Native::LoopOptions.
pub fn consumer_spec(opts: &Fields<16>) -> Result<ConsumerSpec, Error> {
    Ok(ConsumerSpec {
        stream: opts.get("stream")?,
        durable: opts.get("durable")?,
        filter_subject: opts.get("filter_subject")?,
        ack_wait: Duration::from_millis(opts.get("ack_wait_ms")?),
        max_deliver: opts.get("max_deliver")?,
        max_ack_pending: opts.get("max_ack_pending")?,
        push: push_delivery(opts)?,
    })
}

static PULL: LazyId = LazyId::new("pull");
static PUSH: LazyId = LazyId::new("push");

/// LoopOptions#consumer_mode, a Symbol of Native::CONSUMER_MODES: :pull (None), or :push
/// with its delivery_subject and deliver_group (both Strings then).
fn push_delivery(opts: &Fields<16>) -> Result<Option<PushDelivery>, Error> {
    let mode: Value = opts.get("consumer_mode")?;
    match Symbol::from_value(mode) {
        Some(s) if s == PULL => Ok(None),
        Some(s) if s == PUSH => Ok(Some(PushDelivery { subject: opts.get("delivery_subject")?, group: opts.get("deliver_group")? })),
        _ => Err(BridgeError::new(Kind::InvalidArgument, format!("consumer_mode {}: one of Native::CONSUMER_MODES (:pull, :push)", mode.inspect())).into_ruby()),
    }
}

/// A Native::StreamLimits (Config#stream_limits): nil where unmanaged.
pub fn stream_limits(ruby: &Ruby, limits: Value) -> Result<Limits, Error> {
    let limits = STREAM_LIMITS.read(ruby, limits)?;
    Ok(Limits {
        max_age: limits.get::<Option<u64>>("max_age_ms")?.map(Duration::from_millis),
        max_bytes: limits.get("max_bytes")?,
        max_msgs: limits.get("max_msgs")?,
    })
}

/// Config#stream_spec (a Native::StreamSpec) as the stream's desired state, `policy`
/// saying what may happen to an existing one's limits.
pub fn stream_spec(ruby: &Ruby, spec: Value, policy: LimitsPolicy) -> Result<StreamSpec, Error> {
    let spec = STREAM_SPEC.read(ruby, spec)?;
    Ok(StreamSpec {
        name: spec.get("name")?,
        subjects: spec.get("subjects")?,
        duplicate_window: Duration::from_millis(spec.get("duplicate_window_ms")?),
        replicas: spec.get("replicas")?,
        retention: spec.get("retention")?,
        limits: stream_limits(ruby, spec.get("limits")?)?,
        limits_policy: policy,
    })
}

/// A message's headers as {name => value}, one value per name (wire/headers.rs says which).
pub fn headers_hash(ruby: &Ruby, pairs: Vec<(String, String)>) -> Result<RHash, Error> {
    let out = ruby.hash_new();
    for (name, value) in crate::wire::headers::first_values(pairs) {
        out.aset(name, value)?;
    }
    Ok(out)
}

/// {name => value} as NATS headers (Nats-Msg-Id comes from the msg_id argument). Ruby
/// checks names first (Publisher::Headers); this refuses what the wire cannot carry.
pub fn header_map(headers: RHash) -> Result<async_nats::HeaderMap, Error> {
    let mut map = async_nats::HeaderMap::new();
    headers.foreach(|name: String, value: String| {
        let header = name.parse::<async_nats::HeaderName>().ok().filter(|_| !value.contains(['\r', '\n']));
        let Some(header) = header else {
            return Err(BridgeError::new(Kind::InvalidArgument, format!("header {name:?}: an invalid name, or a value of more than one line")).into_ruby());
        };
        map.insert(header, value.as_str());
        Ok(magnus::r_hash::ForEach::Continue)
    })?;
    Ok(map)
}
