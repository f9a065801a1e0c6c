//! Ruby arguments to the core's values, shared by the Native functions, Client and
//! Consumer.

use std::time::Duration;

use magnus::{Error, RHash, Ruby};

use crate::errors::{BridgeError, Kind};
use crate::publish::json_string::Style;
use crate::topology::durable::ConsumerSpec;
use crate::topology::limits::{Limits, LimitsPolicy};
use crate::topology::stream::StreamSpec;

/// A required option: KeyError when `opts` lacks `key`.
pub fn req<T: magnus::TryConvert>(opts: RHash, key: &str) -> Result<T, Error> {
    opts.fetch::<_, T>(key)
}

/// The durable's desired config from Consumer#loop_options.
pub fn consumer_spec(opts: RHash) -> Result<ConsumerSpec, Error> {
    Ok(ConsumerSpec {
        stream: req(opts, "stream")?,
        durable: req(opts, "durable")?,
        filter_subject: req(opts, "filter_subject")?,
        ack_wait: Duration::from_millis(req(opts, "ack_wait_ms")?),
        max_deliver: req(opts, "max_deliver")?,
        max_ack_pending: req(opts, "max_ack_pending")?,
    })
}

/// Config#stream_limits: {"max_age_ms", "max_bytes", "max_msgs"}, nil where unmanaged.
pub fn stream_limits(limits: RHash) -> Result<Limits, Error> {
    Ok(Limits {
        max_age: limits.lookup::<_, Option<u64>>("max_age_ms")?.map(Duration::from_millis),
        max_bytes: limits.lookup("max_bytes")?,
        max_msgs: limits.lookup("max_msgs")?,
    })
}

/// Config#stream_spec ([name, subjects, duplicate_window_ms, replicas, stream_limits]) as
/// the stream's desired state, `policy` saying what may happen to an existing one's limits.
pub fn stream_spec(spec: (String, Vec<String>, u64, usize, RHash), policy: LimitsPolicy) -> Result<StreamSpec, Error> {
    let (name, subjects, duplicate_window_ms, replicas, limits) = spec;
    Ok(StreamSpec {
        name,
        subjects,
        duplicate_window: Duration::from_millis(duplicate_window_ms),
        replicas,
        limits: stream_limits(limits)?,
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

/// The JSON style argument: 0 JSON.generate, 1 ActiveSupport, 2 ActiveSupport escaping
/// HTML entities (see publish/json_string.rs).
pub fn json_style(style: u8) -> Style {
    match style {
        0 => Style::JsonGem,
        1 => Style::ActiveSupport,
        _ => Style::ActiveSupportHtmlSafe,
    }
}
