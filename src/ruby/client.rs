//! `JetstreamBridge::Native::Client`: the Ruby handle on one NATS connection.
//!
//! Every method converts Ruby arguments to plain Rust values first, waits in
//! `gvl::without_gvl`, and builds Ruby results after the GVL is back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnus::{function, method, prelude::*, Error, IntoValue, RArray, RHash, RModule, RString, Ruby, Value};

use crate::runtime::process::ProcessOwned;
use crate::wire::connection::{self, ConnectSpec, Connection};
use crate::errors::{BridgeError, Kind};
use crate::ruby::convert::{consumer_spec, header_map, headers_hash, json_style, stream_spec};
use crate::ruby::consumer::Consumer;
use crate::ruby::publish_args;
use crate::ruby::gvl::without_gvl;
use crate::ruby::topology;
use crate::publish::publisher::{self, Outgoing};
use crate::publish::size;
use crate::topology::ensure;
use crate::topology::stream;

/// Leaked in a forked child (ProcessOwned): the connection belongs to the parent's runtime.
#[magnus::wrap(class = "JetstreamBridge::Native::Client", free_immediately, size)]
pub struct Client {
    conn: ProcessOwned<Arc<Connection>>,
}

/// Defines `JetstreamBridge::Native::Client` and its methods.
pub fn init(ruby: &Ruby, native: RModule) -> Result<(), Error> {
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
    Ok(())
}

fn opt_string(opts: RHash, key: &str) -> Result<Option<String>, Error> {
    opts.lookup::<_, Option<String>>(key)
}

fn millis(opts: RHash, key: &str, default: u64) -> Result<Duration, Error> {
    Ok(Duration::from_millis(opts.lookup::<_, Option<u64>>(key)?.unwrap_or(default)))
}

/// A header value is one line: async-nats panics on CR/LF in one.
fn check_msg_id(msg_id: &str) -> Result<(), Error> {
    if msg_id.is_empty() || msg_id.contains(['\r', '\n']) {
        return Err(raise(BridgeError::new(Kind::InvalidArgument, "event_id must be one non-empty line (it becomes the Nats-Msg-Id header)")));
    }
    Ok(())
}

/// Refuses, before it is sent, a message the server would refuse (see publish::size).
fn check_size(client: &Client, msg_id: &str, body_len: usize, headers: Option<&async_nats::HeaderMap>) -> Result<(), Error> {
    size::check(msg_id, body_len, headers, Some(client.conn.client.max_payload())).map_err(raise)
}

/// The error of event `index` of a publish_batch call, saying so.
fn in_batch(mut e: BridgeError, index: usize) -> BridgeError {
    e.message = format!("publish_batch events[{index}]: {}", e.message);
    e
}

/// Events a batch sends per part: enough that waiting for a part's last acks (one round
/// trip) costs nothing measurable, few enough that a part's messages take a few MB.
const PART_SIZE: usize = 8192;

/// A built event of a batch waiting to be sent: its subject when not the default, and
/// its body followed by its event id, in the batch's arena.
struct Packed {
    subject: Option<Box<str>>,
    body_and_id: Bytes,
    body_len: usize,
}

impl Packed {
    fn into_outgoing(self, default_subject: &str) -> Outgoing {
        Outgoing {
            subject: self.subject.map_or_else(|| default_subject.to_string(), String::from),
            body: self.body_and_id.slice(..self.body_len),
            // Copied from the event id's String: UTF-8.
            msg_id: String::from_utf8_lossy(&self.body_and_id[self.body_len..]).into_owned(),
            headers: None,
        }
    }
}

/// Sends one part of a batch (GVL released); the denials come back for the next part.
type PartOutcome = (Vec<crate::errors::Result<publisher::Ack>>, publisher::Denials);

fn send_part(client: &Client, part: Vec<Outgoing>, window: usize, mut denials: publisher::Denials) -> Result<PartOutcome, Error> {
    let conn = (*client.conn).clone();
    without_gvl(async move {
        let results = publisher::publish_batch(&conn, &part, window, &mut denials).await;
        (results, denials)
    })
}

/// After a large batch, hands the heap memory it freed back to the system: glibc keeps
/// freed memory of its arenas (the tokio threads' too) for reuse, and a 200,000-event
/// batch would otherwise leave a few hundred MB resident for good.
fn release_freed_memory(events: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if events >= 10_000 {
        unsafe { libc::malloc_trim(0) };
    }
}

fn raise(e: BridgeError) -> Error {
    e.into_ruby()
}

impl Client {
    /// Native::Client.connect(opts) with string keys: urls, name, user, password, token,
    /// nkey_seed, credentials_file, tls_ca_file, tls_cert_file, tls_key_file,
    /// connect_timeout_ms, request_timeout_ms, stream, api.
    pub fn connect(opts: RHash) -> Result<Client, Error> {
        let path = |k: &str| opt_string(opts, k).map(|o| o.map(PathBuf::from));
        let spec = ConnectSpec {
            urls: opts.lookup::<_, Option<Vec<String>>>("urls")?.unwrap_or_default(),
            name: opt_string(opts, "name")?.unwrap_or_else(|| "jetstream_bridge".into()),
            user: opt_string(opts, "user")?,
            password: opt_string(opts, "password")?,
            token: opt_string(opts, "token")?,
            nkey_seed: opt_string(opts, "nkey_seed")?,
            credentials_file: path("credentials_file")?,
            tls_ca_file: path("tls_ca_file")?,
            tls_cert_file: path("tls_cert_file")?,
            tls_key_file: path("tls_key_file")?,
            connect_timeout: millis(opts, "connect_timeout_ms", 5_000)?,
            request_timeout: millis(opts, "request_timeout_ms", 5_000)?,
            stream: opt_string(opts, "stream")?,
            api: opts.lookup::<_, Option<bool>>("api")?.unwrap_or(true),
        };
        let conn = without_gvl(connection::connect(spec))?.map_err(raise)?;
        Ok(Client { conn: ProcessOwned::new(Arc::new(conn)) })
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }

    pub fn connected_at(&self) -> Option<String> {
        crate::sync::lock(&self.conn.connected_at).clone()
    }

    pub fn server_info(ruby: &Ruby, rb_self: &Self) -> Result<RHash, Error> {
        let info = rb_self.conn.client.server_info();
        let h = ruby.hash_new();
        h.aset("server_id", info.server_id)?;
        h.aset("server_name", info.server_name)?;
        h.aset("version", info.version)?;
        h.aset("host", info.host)?;
        h.aset("port", info.port)?;
        h.aset("max_payload", info.max_payload)?;
        h.aset("jetstream", info.jetstream)?;
        Ok(h)
    }

    pub fn events_pending(&self) -> bool {
        self.conn.events.pending()
    }

    /// A file descriptor that is readable while events are queued (drain_events resets it):
    /// Connection's watcher thread waits on it with IO#wait_readable.
    pub fn events_fd(&self) -> i32 {
        self.conn.events.ready_fd()
    }

    /// [[level, kind, message, at], ...] and the number dropped since the last drain.
    pub fn drain_events(ruby: &Ruby, rb_self: &Self) -> Result<(RArray, u64), Error> {
        let (events, dropped) = rb_self.conn.events.drain();
        let out = ruby.ary_new_capa(events.len());
        for e in events {
            out.push((e.level, e.kind, e.message, e.at))?;
        }
        Ok((out, dropped))
    }

    /// Provisions or verifies the stream as `how` says (ruby/topology.rs), with
    /// Config#stream_spec's values; returns the report Hash.
    #[allow(clippy::too_many_arguments)]
    pub fn ensure_stream(
        ruby: &Ruby,
        rb_self: &Self,
        name: String,
        subjects: Vec<String>,
        duplicate_window_ms: u64,
        replicas: usize,
        limits: RHash,
        how: String,
    ) -> Result<RHash, Error> {
        let (mode, policy) = topology::how(&how)?;
        let spec = stream_spec((name, subjects, duplicate_window_ms, replicas, limits), policy)?;
        let conn = rb_self.conn.clone();
        let report = without_gvl(async move { ensure::stream(&conn.js, &spec, mode).await })?.map_err(raise)?;
        topology::report_hash(ruby, report)
    }

    /// The stream's info as JSON, or nil when it does not exist.
    pub fn stream_info(&self, name: String) -> Result<Option<String>, Error> {
        let conn = (*self.conn).clone();
        let info = without_gvl(async move { stream::stream_info(&conn.js, &name).await })?.map_err(raise)?;
        Ok(info.map(|v| v.to_string()))
    }

    /// Publishes one message; returns [stream, sequence, duplicate].
    pub fn publish(&self, subject: String, body: RString, msg_id: String) -> Result<(String, u64, bool), Error> {
        check_msg_id(&msg_id)?;
        check_size(self, &msg_id, body.len(), None)?;
        // Copy the body while we hold the GVL: Ruby may move or free it once released.
        let msg = Outgoing { subject, body: Bytes::copy_from_slice(unsafe { body.as_slice() }), msg_id, headers: None };
        let conn = (*self.conn).clone();
        let ack = without_gvl(async move { publisher::publish(&conn, &msg).await })?.map_err(raise)?;
        Ok((ack.stream, ack.sequence, ack.duplicate))
    }

    /// Publishes one message with headers ({name => value}; Nats-Msg-Id comes from
    /// `msg_id`); returns [stream, sequence, duplicate].
    pub fn publish_with_headers(&self, subject: String, body: RString, headers: RHash, msg_id: String) -> Result<(String, u64, bool), Error> {
        check_msg_id(&msg_id)?;
        let headers = Some(header_map(headers)?);
        check_size(self, &msg_id, body.len(), headers.as_ref())?;
        let body = Bytes::copy_from_slice(unsafe { body.as_slice() });
        let msg = Outgoing { subject, body, msg_id, headers };
        let conn = (*self.conn).clone();
        let ack = without_gvl(async move { publisher::publish(&conn, &msg).await })?.map_err(raise)?;
        Ok((ack.stream, ack.sequence, ack.duplicate))
    }

    /// The first message of `stream` at or after `seq` (on `subject` when given):
    /// [seq, subject, headers ({name => value}, headers_hash), body (binary), stored at], or nil.
    pub fn stream_message(ruby: &Ruby, rb_self: &Self, stream: String, seq: u64, subject: Option<String>) -> Result<Option<RArray>, Error> {
        let conn = (*rb_self.conn).clone();
        let found = without_gvl(async move { crate::wire::stored::get(&conn, &stream, seq, subject.as_deref()).await })?.map_err(raise)?;
        let Some(message) = found else { return Ok(None) };
        let out = ruby.ary_new_capa(5);
        out.push(message.seq)?;
        out.push(message.subject)?;
        out.push(headers_hash(ruby, crate::wire::headers::parse_block(&message.header_block))?)?;
        out.push(ruby.str_from_slice(&message.body))?;
        out.push(message.time)?;
        Ok(Some(out))
    }

    /// Deletes message `seq` from `stream`; false when it was not there.
    pub fn delete_message(&self, stream: String, seq: u64) -> Result<bool, Error> {
        let conn = (*self.conn).clone();
        without_gvl(async move { crate::wire::stored::delete(&conn, &stream, seq).await })?.map_err(raise)
    }

    /// Builds the event from the publish arguments and publishes it, in one call: the
    /// common case of `publish`. False (nothing sent) when Ruby must build the event
    /// (see publish_args.rs); [stream, sequence, duplicate, event_id, subject] once acked.
    /// A failed publish raises its error with `@unsent_event` = [subject, event_id, json],
    /// which Ruby's retries send again.
    pub fn publish_event(ruby: &Ruby, rb_self: &Self, args: RHash, default_subject: RString, app_name: RString, style: u8) -> Result<Value, Error> {
        let Some(built) = publish_args::build(ruby, args, app_name, json_style(style)) else { return Ok(ruby.qfalse().as_value()) };
        let subject = match built.subject {
            Some(s) => s,
            None => default_subject.to_string()?,
        };
        check_size(rb_self, &built.event_id, built.json.len(), None)?;
        let msg = Outgoing { subject, body: Bytes::from(built.json), msg_id: built.event_id, headers: None };
        let conn = (*rb_self.conn).clone();
        // The message comes back with the result: a failed attempt hands it to Ruby.
        let (result, msg) = without_gvl(async move { (publisher::publish(&conn, &msg).await, msg) })?;
        let e = match result {
            Ok(ack) => {
                crate::publish::body_buffer::give_back(msg.body);
                return Ok((ack.stream, ack.sequence, ack.duplicate, msg.msg_id, msg.subject).into_value_with(ruby));
            }
            Err(e) => e,
        };
        let error = raise(e);
        if let Some(exception) = error.value() {
            // The envelope is UTF-8 text (a String before it became Bytes).
            let unsent = (msg.subject, msg.msg_id, ruby.str_new(&String::from_utf8_lossy(&msg.body)));
            let _: Value = exception.funcall("instance_variable_set", ("@unsent_event", unsent))?;
        }
        Err(error)
    }

    /// Builds and publishes many events (publish argument Hashes) with up to `window`
    /// acks in flight. Nil (nothing sent) when Ruby must build any of them; otherwise
    /// [event_ids, duplicates, failures], a failure being [index, error_class, message].
    /// Every event is built before any is sent (one that Ruby must build or reject stops
    /// the batch before anything went out), packed tightly (batch_arena.rs), then sent in
    /// parts of PART_SIZE, each part's memory freed once it is acked.
    pub fn publish_events(
        ruby: &Ruby,
        rb_self: &Self,
        events: RArray,
        default_subject: RString,
        app_name: RString,
        style: u8,
        window: usize,
    ) -> Result<Option<(RArray, usize, RArray)>, Error> {
        let style = json_style(style);
        let default_subject = default_subject.to_string()?;
        let mut arena = crate::publish::batch_arena::Arena::for_events(events.len());
        let mut packed = Vec::with_capacity(events.len());
        // By index, not by slice: building may call Ruby (Float#to_s), which may run the GC.
        for i in 0..events.len() {
            let Some(args) = RHash::from_value(events.entry(i as isize)?) else { return Ok(None) };
            let Some(built) = publish_args::build(ruby, args, app_name, style) else { return Ok(None) };
            // Before anything is sent.
            size::check(&built.event_id, built.json.len(), None, Some(rb_self.conn.client.max_payload())).map_err(|e| raise(in_batch(e, i)))?;
            packed.push(Packed {
                subject: built.subject.map(String::into_boxed_str),
                body_and_id: arena.copy_pair(built.json.as_bytes(), built.event_id.as_bytes()),
                body_len: built.json.len(),
            });
            crate::publish::body_buffer::keep(built.json); // the next event is built in the same buffer
        }
        drop(arena);
        let total = packed.len();
        let (event_ids, failures) = (ruby.ary_new_capa(total), ruby.ary_new());
        let mut duplicates = 0;
        let mut denials = publisher::Denials::watch();
        let mut rest = packed.into_iter();
        for start in (0..total).step_by(PART_SIZE) {
            let part: Vec<Outgoing> = rest.by_ref().take(PART_SIZE).map(|p| p.into_outgoing(&default_subject)).collect();
            for msg in &part {
                event_ids.push(msg.msg_id.as_str())?;
            }
            let (results, back) = send_part(rb_self, part, window, denials)?;
            denials = back;
            for (offset, result) in results.into_iter().enumerate() {
                match result {
                    Ok(ack) => duplicates += ack.duplicate as usize,
                    Err(e) => failures.push((start + offset, e.kind.class_name(), e.message))?,
                }
            }
        }
        release_freed_memory(total);
        Ok(Some((event_ids, duplicates, failures)))
    }

    /// Publishes [[subject, body, msg_id, headers or nil], ...] with up to `window` acks in
    /// flight, in parts of PART_SIZE (each part's bodies copied, sent and freed in turn).
    /// Returns, in order, [true, stream, seq, duplicate] or [false, error_class, message].
    /// A message the server would refuse (publish::size) raises before anything is sent
    /// when `all_or_nothing` (publish_batch's contract); otherwise (the outbox relay) it
    /// is a failed row of its own, not sent, and the others go.
    pub fn publish_batch(ruby: &Ruby, rb_self: &Self, items: RArray, window: usize, all_or_nothing: bool) -> Result<RArray, Error> {
        let max_payload = Some(rb_self.conn.client.max_payload());
        let mut refused: Vec<Option<BridgeError>> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let (_, body, msg_id, headers): (Value, RString, String, Option<RHash>) = magnus::TryConvert::try_convert(item)?;
            check_msg_id(&msg_id)?; // before anything is sent
            let headers = headers.map(header_map).transpose()?;
            match size::check(&msg_id, body.len(), headers.as_ref(), max_payload) {
                Err(e) if all_or_nothing => return Err(raise(in_batch(e, i))),
                checked => refused.push(checked.err()),
            }
        }
        let out = ruby.ary_new_capa(items.len());
        let mut denials = publisher::Denials::watch();
        for start in (0..items.len()).step_by(PART_SIZE) {
            let end = (start + PART_SIZE).min(items.len());
            let mut part = Vec::with_capacity(end - start);
            for i in (start..end).filter(|i| refused[*i].is_none()) {
                let (subject, body, msg_id, headers): (String, RString, String, Option<RHash>) =
                    magnus::TryConvert::try_convert(items.entry::<Value>(i as isize)?)?;
                let headers = headers.map(header_map).transpose()?;
                part.push(Outgoing { subject, body: Bytes::copy_from_slice(unsafe { body.as_slice() }), msg_id, headers });
            }
            let (results, back) = send_part(rb_self, part, window, denials)?;
            denials = back;
            let mut results = results.into_iter();
            for slot in refused[start..end].iter_mut() {
                let row: Value = match slot.take().map(Err).or_else(|| results.next()) {
                    Some(Ok(ack)) => (true, ack.stream, ack.sequence, ack.duplicate).into_value_with(ruby),
                    Some(Err(e)) => (false, e.kind.class_name(), e.message).into_value_with(ruby),
                    None => unreachable!("one result per message sent"),
                };
                out.push(row)?;
            }
        }
        release_freed_memory(items.len());
        Ok(out)
    }

    /// Starts a pull loop on this connection (see consumer.rs for the options).
    /// Creates or updates the durable (Consumer#loop_options); returns [action, changes].
    pub fn ensure_consumer(&self, opts: RHash) -> Result<(String, Vec<String>), Error> {
        let spec = consumer_spec(opts)?;
        let conn = (*self.conn).clone();
        let report = without_gvl(async move { crate::topology::durable::ensure_consumer(&conn.js, &spec, None).await })?.map_err(raise)?;
        Ok((report.action.to_string(), report.changes))
    }

    pub fn pull_loop(&self, opts: RHash) -> Result<Consumer, Error> {
        Consumer::start((*self.conn).clone(), opts)
    }

    /// Closes the connection after flushing what was sent.
    pub fn close(&self) -> Result<(), Error> {
        let conn = (*self.conn).clone();
        without_gvl(async move { conn.client.drain().await })?
            .map_err(|e| raise(BridgeError::new(Kind::Connection, format!("close failed: {e}"))))
    }
}
