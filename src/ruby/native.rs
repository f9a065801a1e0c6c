//! The `JetstreamBridge::Native` module functions: durations, names, validation,
//! envelope building and payload encoding, each a thin conversion to the core.

use magnus::{function, prelude::*, Error, IntoValue, RHash, RModule, Ruby, Value};

use crate::duration;
use crate::errors::{BridgeError, Kind};
use crate::publish::envelope;
use crate::ruby::convert::{header_map, stream_limits};
use crate::ruby::types::{self, ENVELOPE};
use crate::ruby::{publish_args, publish_items};
use crate::ruby::to_json;
use crate::topology::names as naming;
use crate::topology::subjects;

/// Defines the functions and constants of `JetstreamBridge::Native`.
pub fn init(ruby: &Ruby, native: RModule) -> Result<(), Error> {
    native.define_singleton_method("duration_ms", function!(duration_ms, 2))?;
    native.define_singleton_method("names", function!(names, 4))?;
    native.define_singleton_method("validate_token", function!(validate_token, 2))?;
    native.define_singleton_method("validate_subject", function!(validate_subject, 1))?;
    native.define_singleton_method("build_envelope", function!(build_envelope, 8))?;
    native.define_singleton_method("encode_json", function!(encode_json, 2))?;
    native.define_singleton_method("build_event", function!(build_event, 2))?;
    native.define_singleton_method("check_message_size", function!(check_message_size, 4))?;
    // Process.pid without a system call (see runtime/process.rs).
    native.define_singleton_method("pid", function!(crate::runtime::process::id, 0))?;
    native.define_singleton_method("redact", function!(|s: String| crate::redact::redact(&s), 1))?;
    // One nats_urls entry, scheme or not (Config shows them through it).
    native.define_singleton_method("redact_url", function!(|s: String| crate::redact::redact_url(&s), 1))?;
    native.define_singleton_method("stream_limit_differences", function!(stream_limit_differences, 2))?;
    native.const_set("DLQ_HEADERS", dlq_headers(ruby)?)?;
    // Cargo's profile of this build (ext/jetstream_bridge/extconf.rb): "release", or "ci"
    // for the test command's build, which the benchmarks refuse.
    native.const_set("BUILD_PROFILE", option_env!("JETSTREAM_BRIDGE_CARGO_PROFILE").unwrap_or("release"))?;
    Ok(())
}

/// Native::DLQ_HEADERS: {"reason" => "X-Dead-Letter-Reason", ...} (consume/dlq_headers.rs), frozen.
fn dlq_headers(ruby: &Ruby) -> Result<RHash, Error> {
    let names = ruby.hash_new();
    for (key, header) in crate::consume::dlq_headers::ALL {
        let (key, header) = (ruby.str_new(key), ruby.str_new(header));
        key.freeze();
        header.freeze();
        names.aset(key, header)?;
    }
    names.freeze();
    Ok(names)
}

/// A ConfigurationError raised in Ruby.
fn config_error(message: String) -> Error {
    BridgeError::new(Kind::Configuration, message).into_ruby()
}

/// Native.duration_ms(value, option): "30s" / 30 / 1.5 -> milliseconds.
pub fn duration_ms(ruby: &Ruby, value: Value, option: String) -> Result<u64, Error> {
    let parsed = if let Some(s) = magnus::RString::from_value(value) {
        duration::parse(&s.to_string()?, &option)
    } else if value.is_kind_of(ruby.class_integer()) || value.is_kind_of(ruby.class_float()) {
        let seconds: f64 = magnus::TryConvert::try_convert(value)?;
        duration::from_seconds(seconds, &option, &value.inspect())
    } else {
        Err(format!(
            "{option} must be a duration like \"30s\" or a number of seconds, got {}",
            value.inspect()
        ))
    };
    parsed.map(|d| d.as_millis() as u64).map_err(config_error)
}

/// Native.names(subject_layout, env, app_name, destination_app) -> Hash of every derived
/// name, and the retention a stream the bridge creates gets; subject_layout is "env" or "app".
pub fn names(ruby: &Ruby, layout: String, env: String, app: String, dest: String) -> Result<RHash, Error> {
    let n = naming::Layout::parse(&layout)
        .and_then(|layout| naming::Names::new(layout, &env, &app, &dest))
        .map_err(|m| BridgeError::new(Kind::InvalidSubject, m).into_ruby())?;
    let h = ruby.hash_new();
    let retention = n.retention.to_string();
    let named = [("stream", n.stream), ("publish_subject", n.publish_subject), ("subscribe_subject", n.subscribe_subject),
                 ("dlq_subject", n.dlq_subject), ("durable", n.durable), ("retention", retention)];
    for (name, value) in named {
        h.aset(name, value)?;
    }
    Ok(h)
}

/// Native.validate_token(option, value): raises InvalidSubjectError naming the option.
pub fn validate_token(option: String, value: String) -> Result<(), Error> {
    subjects::validate_token(&option, &value).map_err(|m| BridgeError::new(Kind::InvalidSubject, m).into_ruby())
}

/// Native.validate_subject(subject): raises ArgumentError for an unusable publish subject.
pub fn validate_subject(subject: String) -> Result<(), Error> {
    subjects::validate_publish_subject(&subject)
        .map_err(|m| BridgeError::new(Kind::InvalidArgument, m).into_ruby())
}

/// Native.build_envelope(event_id, event_type, producer, resource_type, resource_id,
/// occurred_at, trace_id, payload_json) -> a Native::Envelope (event_id, json)
#[allow(clippy::too_many_arguments)]
pub fn build_envelope(
    ruby: &Ruby,
    event_id: Option<String>,
    event_type: String,
    producer: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    occurred_at: Option<String>,
    trace_id: Option<String>,
    payload_json: String,
) -> Result<Value, Error> {
    let (event_id, json) = envelope::build(&envelope::EnvelopeInput {
        event_id,
        event_type,
        producer,
        resource_type,
        resource_id,
        occurred_at,
        trace_id,
    }, &payload_json)
    .map_err(|m| BridgeError::new(Kind::InvalidArgument, m).into_ruby())?;
    Ok(ENVELOPE.build(ruby, [event_id.into_value_with(ruby), json.into_value_with(ruby)]))
}

/// Native.encode_json(payload, style) -> the payload's JSON, or nil when Ruby must encode
/// it (see to_json.rs). style: a Symbol of Native::JSON_STYLES.
pub fn encode_json(ruby: &Ruby, payload: Value, style: Value) -> Result<Option<String>, Error> {
    Ok(types::json_style(ruby, style)?.and_then(|style| to_json::encode(ruby, payload, style)))
}

/// Native.build_event(args, defaults: a Native::EventDefaults) -> a Native::BuiltEvent, or
/// nil when Ruby's Event.build must do it (see publish_args.rs).
pub fn build_event(ruby: &Ruby, args: RHash, defaults: Value) -> Result<Option<Value>, Error> {
    let defaults = publish_items::defaults(ruby, defaults)?;
    let Some(style) = defaults.style else { return Ok(None) };
    Ok(publish_args::build(ruby, args, defaults.producer, style).map(|built| built.into_ruby(ruby, defaults.subject)))
}


/// How a stream config (its JSON) differs from the managed limits (Config#stream_limits, a
/// Native::StreamLimits),
/// one line each ("max_msgs: stream no limit, configured 10"): what `verify_topology!`
/// warns about when auto_provision is off, and health_check's `limits_drift`.
pub fn stream_limit_differences(ruby: &Ruby, config_json: String, limits: Value) -> Result<Vec<String>, Error> {
    let config: serde_json::Value = serde_json::from_str(&config_json)
        .map_err(|e| BridgeError::new(Kind::InvalidArgument, format!("stream config is not JSON: {e}")).into_ruby())?;
    Ok(stream_limits(ruby, limits)?.differences(&config).iter().map(|d| d.drift()).collect())
}

/// Native.check_message_size(event_id, body_bytes, headers or nil, max_payload or nil):
/// raises what a publish of it would before sending (see publish::size), for the outbox
/// to refuse a row that could never be sent.
pub fn check_message_size(event_id: String, body_bytes: usize, headers: Option<RHash>, max_payload: Option<usize>) -> Result<(), Error> {
    let headers = headers.map(header_map).transpose()?;
    crate::publish::size::check(&event_id, body_bytes, headers.as_ref(), max_payload).map_err(BridgeError::into_ruby)
}
