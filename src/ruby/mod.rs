//! The Ruby boundary: the only code that touches Ruby (magnus, rb-sys). Everything it
//! hands to the rest of the core is plain Rust data; see src/README.md for which thread
//! may run what.

pub mod client;
pub mod consumer;
pub mod from_json;
pub mod gvl;
pub mod native;
pub mod publish_args;
pub mod raise;
pub mod to_json;

use magnus::{function, method, prelude::*, Error, Ruby};

use client::Client;
use consumer::Consumer;

/// Defines `JetstreamBridge::Native` (functions, Client, Consumer); called once by the
/// extension's init.
pub fn define(ruby: &Ruby) -> Result<(), Error> {
    crate::runtime::process::install_fork_handler();
    let bridge = ruby.define_module("JetstreamBridge")?;
    let native = bridge.define_module("Native")?;
    native.define_singleton_method("duration_ms", function!(native::duration_ms, 2))?;
    native.define_singleton_method("names", function!(native::names, 3))?;
    native.define_singleton_method("validate_token", function!(native::validate_token, 2))?;
    native.define_singleton_method("validate_subject", function!(native::validate_subject, 1))?;
    native.define_singleton_method("build_envelope", function!(native::build_envelope, 8))?;
    native.define_singleton_method("encode_json", function!(native::encode_json, 2))?;
    native.define_singleton_method("build_event", function!(native::build_event, 4))?;
    native.define_singleton_method("check_message_size", function!(native::check_message_size, 4))?;
    // Process.pid without a system call (see runtime/process.rs).
    native.define_singleton_method("pid", function!(crate::runtime::process::id, 0))?;
    native.define_singleton_method("redact", function!(|s: String| crate::redact::redact(&s), 1))?;
    // One nats_urls entry, scheme or not (Config shows them through it).
    native.define_singleton_method("redact_url", function!(|s: String| crate::redact::redact_url(&s), 1))?;
    native.define_singleton_method(
        "subject_matches?",
        function!(|p: String, s: String| crate::topology::subjects::matches(&p, &s), 2),
    )?;

    native.define_singleton_method("stream_limit_differences", function!(native::stream_limit_differences, 2))?;

    let client = native.define_class("Client", ruby.class_object())?;
    client.define_singleton_method("connect", function!(Client::connect, 1))?;
    client.define_method("connected?", method!(Client::is_connected, 0))?;
    client.define_method("connected_at", method!(Client::connected_at, 0))?;
    client.define_method("server_info", method!(Client::server_info, 0))?;
    client.define_method("events_pending?", method!(Client::events_pending, 0))?;
    client.define_method("drain_events", method!(Client::drain_events, 0))?;
    client.define_method("events_fd", method!(Client::events_fd, 0))?;
    client.define_method("ensure_stream", method!(Client::ensure_stream, 6))?;
    client.define_method("stream_info", method!(Client::stream_info, 1))?;
    client.define_method("publish", method!(Client::publish, 3))?;
    client.define_method("publish_batch", method!(Client::publish_batch, 3))?;
    client.define_method("publish_with_headers", method!(Client::publish_with_headers, 4))?;
    client.define_method("stream_message", method!(Client::stream_message, 3))?;
    client.define_method("delete_message", method!(Client::delete_message, 2))?;
    client.define_method("publish_event", method!(Client::publish_event, 4))?;
    client.define_method("publish_events", method!(Client::publish_events, 5))?;
    client.define_method("close", method!(Client::close, 0))?;
    client.define_method("pull_loop", method!(Client::pull_loop, 1))?;
    client.define_method("ensure_consumer", method!(Client::ensure_consumer, 1))?;

    let consumer = native.define_class("Consumer", ruby.class_object())?;
    consumer.define_method("next_batch", method!(Consumer::next_batch, 2))?;
    consumer.define_method("claim", method!(Consumer::claim, 1))?;
    consumer.define_method("headers", method!(Consumer::headers, 1))?;
    consumer.define_method("returned", method!(Consumer::returned, 1))?;
    consumer.define_method("ack", method!(Consumer::ack, 1))?;
    consumer.define_method("nak", method!(Consumer::nak, 2))?;
    consumer.define_method("term", method!(Consumer::term, 1))?;
    consumer.define_method("dead_letter", method!(Consumer::dead_letter, 4))?;
    consumer.define_method("stop", method!(Consumer::stop, 0))?;
    consumer.define_method("request_stop", method!(Consumer::request_stop, 0))?;
    consumer.define_method("handler_stuck?", method!(Consumer::handler_stuck, 0))?;
    Ok(())
}
