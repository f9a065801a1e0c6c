//! Native core of the jetstream_bridge gem, exposed to Ruby as `JetstreamBridge::Native`.
//! See ext/README.md for the threading, GVL and fork rules this code follows.

mod api;
mod batch_arena;
mod body_buffer;
mod client;
mod connection;
mod consumer;
mod consumer_binding;
mod dead_letter;
pub mod duration;
pub mod envelope;
mod errors;
mod event_fields;
mod events;
mod gvl;
mod interrupt;
mod json_encode;
pub mod naming;
pub mod provision_consumer;
mod process;
pub mod publisher;
mod random;
pub mod redact;
mod ruby_value;
pub(crate) mod runtime;
pub mod subjects;
pub mod topology;
mod unreadable;

use magnus::{function, method, prelude::*, Error, RArray, RHash, RString, Ruby, Value};

use errors::{BridgeError, Kind};

fn config_error(message: String) -> Error {
    BridgeError::new(Kind::Configuration, message).into_ruby()
}

/// Native.duration_ms(value, option): "30s" / 30 / 1.5 -> milliseconds.
fn duration_ms(ruby: &Ruby, value: Value, option: String) -> Result<u64, Error> {
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

/// Native.names(env, app_name, destination_app) -> Hash of every derived name.
fn names(ruby: &Ruby, env: String, app: String, dest: String) -> Result<RHash, Error> {
    let n = naming::Names::new(&env, &app, &dest).map_err(config_error)?;
    let h = ruby.hash_new();
    h.aset("stream", n.stream)?;
    h.aset("publish_subject", n.publish_subject)?;
    h.aset("subscribe_subject", n.subscribe_subject)?;
    h.aset("dlq_subject", n.dlq_subject)?;
    h.aset("durable", n.durable)?;
    Ok(h)
}

/// Native.validate_token(option, value): raises ConfigurationError naming the option.
fn validate_token(option: String, value: String) -> Result<(), Error> {
    subjects::validate_token(&option, &value).map_err(config_error)
}

/// Native.validate_subject(subject): raises ArgumentError for an unusable publish subject.
fn validate_subject(subject: String) -> Result<(), Error> {
    subjects::validate_publish_subject(&subject)
        .map_err(|m| BridgeError::new(Kind::InvalidArgument, m).into_ruby())
}

/// Native.build_envelope(event_id, event_type, producer, resource_type, resource_id,
/// occurred_at, trace_id, payload_json) -> [event_id, json]
#[allow(clippy::too_many_arguments)]
fn build_envelope(
    event_id: Option<String>,
    event_type: String,
    producer: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    occurred_at: Option<String>,
    trace_id: Option<String>,
    payload_json: String,
) -> Result<(String, String), Error> {
    envelope::build(&envelope::EnvelopeInput {
        event_id,
        event_type,
        producer,
        resource_type,
        resource_id,
        occurred_at,
        trace_id,
    }, &payload_json)
    .map_err(|m| BridgeError::new(Kind::InvalidArgument, m).into_ruby())
}

/// Native.encode_json(payload, style) -> the payload's JSON, or nil when Ruby must encode
/// it (see json_encode.rs). style: 0 JSON.generate, 1 ActiveSupport, 2 ActiveSupport
/// escaping HTML entities.
fn encode_json(ruby: &Ruby, payload: Value, style: u8) -> Option<String> {
    json_encode::encode(ruby, payload, json_style(style))
}

pub(crate) fn json_style(style: u8) -> json_encode::Style {
    match style {
        0 => json_encode::Style::JsonGem,
        1 => json_encode::Style::ActiveSupport,
        _ => json_encode::Style::ActiveSupportHtmlSafe,
    }
}

/// Native.build_event(args, default_subject, app_name, style) -> [subject, event_id,
/// json], or nil when Ruby's Event.build must do it (see event_fields.rs).
fn build_event(ruby: &Ruby, args: RHash, default_subject: RString, app_name: RString, style: u8) -> Option<RArray> {
    event_fields::build(ruby, args, app_name, json_style(style))?.into_ruby(ruby, default_subject)
}

#[magnus::init]
fn init(ruby: &Ruby) -> Result<(), Error> {
    process::install_fork_handler();
    let bridge = ruby.define_module("JetstreamBridge")?;
    let native = bridge.define_module("Native")?;
    native.define_singleton_method("duration_ms", function!(duration_ms, 2))?;
    native.define_singleton_method("names", function!(names, 3))?;
    native.define_singleton_method("validate_token", function!(validate_token, 2))?;
    native.define_singleton_method("validate_subject", function!(validate_subject, 1))?;
    native.define_singleton_method("build_envelope", function!(build_envelope, 8))?;
    native.define_singleton_method("encode_json", function!(encode_json, 2))?;
    native.define_singleton_method("build_event", function!(build_event, 4))?;
    // Process.pid without a system call (see process.rs).
    native.define_singleton_method("pid", function!(process::id, 0))?;
    native.define_singleton_method("redact", function!(|s: String| redact::redact(&s), 1))?;
    native.define_singleton_method(
        "subject_matches?",
        function!(|p: String, s: String| subjects::matches(&p, &s), 2),
    )?;

    let client = native.define_class("Client", ruby.class_object())?;
    client.define_singleton_method("connect", function!(client::Client::connect, 1))?;
    client.define_method("connected?", method!(client::Client::is_connected, 0))?;
    client.define_method("connected_at", method!(client::Client::connected_at, 0))?;
    client.define_method("server_info", method!(client::Client::server_info, 0))?;
    client.define_method("events_pending?", method!(client::Client::events_pending, 0))?;
    client.define_method("drain_events", method!(client::Client::drain_events, 0))?;
    client.define_method("ensure_stream", method!(client::Client::ensure_stream, 4))?;
    client.define_method("stream_info", method!(client::Client::stream_info, 1))?;
    client.define_method("publish", method!(client::Client::publish, 3))?;
    client.define_method("publish_batch", method!(client::Client::publish_batch, 2))?;
    client.define_method("publish_event", method!(client::Client::publish_event, 4))?;
    client.define_method("publish_events", method!(client::Client::publish_events, 5))?;
    client.define_method("get_message", method!(client::Client::get_message, 2))?;
    client.define_method("close", method!(client::Client::close, 0))?;
    client.define_method("pull_loop", method!(client::Client::pull_loop, 1))?;

    use consumer_binding::Consumer;
    let consumer = native.define_class("Consumer", ruby.class_object())?;
    consumer.define_method("next_batch", method!(Consumer::next_batch, 2))?;
    consumer.define_method("claim", method!(Consumer::claim, 1))?;
    consumer.define_method("ack", method!(Consumer::ack, 1))?;
    consumer.define_method("nak", method!(Consumer::nak, 2))?;
    consumer.define_method("term", method!(Consumer::term, 1))?;
    consumer.define_method("dead_letter", method!(Consumer::dead_letter, 4))?;
    consumer.define_method("stop", method!(Consumer::stop, 0))?;
    consumer.define_method("request_stop", method!(Consumer::request_stop, 0))?;
    Ok(())
}
