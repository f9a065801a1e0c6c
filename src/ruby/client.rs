//! `JetstreamBridge::Native::Client`: the Ruby handle on one NATS connection.
//!
//! Every method converts Ruby arguments to plain Rust values first, waits in
//! `gvl::without_gvl`, and builds Ruby results after the GVL is back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use magnus::{function, method, prelude::*, scan_args::scan_args, Error, IntoValue, RArray, RHash, RModule, Ruby, Value};

use crate::runtime::process::ProcessOwned;
use crate::wire::connection::{self, ConnectSpec, Connection};
use crate::errors::{BridgeError, Kind};
use crate::ruby::convert::{consumer_spec, headers_hash, loop_options, stream_spec};
use crate::ruby::types::{BATCH_OUTCOME, BUILT_EVENT, CONNECTION_EVENT, CONNECT_OPTIONS, DRAINED_EVENTS, DURABLE_REPORT, FAILURE, PUBLISHED, STORED_MESSAGE};
use crate::ruby::consumer::Consumer;
use crate::ruby::publish_items;
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
    client.define_method("ensure_stream", method!(Client::ensure_stream, 2))?;
    client.define_method("stream_info", method!(Client::stream_info, -1))?;
    client.define_method("stream_message", method!(Client::stream_message, 3))?;
    client.define_method("delete_message", method!(Client::delete_message, 2))?;
    client.define_method("publish_event", method!(Client::publish_event, 2))?;
    client.define_method("publish_events", method!(Client::publish_events, 4))?;
    client.define_method("close", method!(Client::close, 0))?;
    client.define_method("pull_loop", method!(Client::pull_loop, 1))?;
    client.define_method("ensure_consumer", method!(Client::ensure_consumer, 1))?;
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

/// A built event of a batch waiting to be sent: its subject when not the default, its
/// body followed by its event id in the batch's arena, its headers, and why it will not
/// be sent (a size the server would refuse), if so.
struct Packed {
    subject: Option<Box<str>>,
    body_and_id: Bytes,
    body_len: usize,
    headers: Option<async_nats::HeaderMap>,
    refused: Option<BridgeError>,
}

impl Packed {
    fn into_outgoing(self, default_subject: &str) -> (Outgoing, Option<BridgeError>) {
        let msg = Outgoing {
            subject: self.subject.map_or_else(|| default_subject.to_string(), String::from),
            body: self.body_and_id.slice(..self.body_len),
            // Copied from the event id's String: UTF-8.
            msg_id: String::from_utf8_lossy(&self.body_and_id[self.body_len..]).into_owned(),
            headers: self.headers,
        };
        (msg, self.refused)
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

/// Message `index` of a batch, not published: a Native::Failure with the class of its error.
fn failure_value(ruby: &Ruby, index: usize, e: BridgeError) -> Value {
    let class = crate::ruby::raise::class_of(ruby, e.kind);
    FAILURE.build(ruby, [index.into_value_with(ruby), class.as_value(), e.message.into_value_with(ruby)])
}

impl Client {
    /// Native::Client.connect(opts: a Native::ConnectOptions).
    pub fn connect(ruby: &Ruby, opts: Value) -> Result<Client, Error> {
        let opts = CONNECT_OPTIONS.read(ruby, opts)?;
        let path = |k: &str| opts.get::<Option<String>>(k).map(|o| o.map(PathBuf::from));
        let millis = |k: &str, default: u64| opts.get::<Option<u64>>(k).map(|ms| Duration::from_millis(ms.unwrap_or(default)));
        let spec = ConnectSpec {
            urls: opts.get::<Option<Vec<String>>>("urls")?.unwrap_or_default(),
            name: opts.get::<Option<String>>("name")?.unwrap_or_else(|| "jetstream_bridge".into()),
            user: opts.get("user")?,
            password: opts.get("password")?,
            token: opts.get("token")?,
            nkey_seed: opts.get("nkey_seed")?,
            credentials_file: path("credentials_file")?,
            tls_ca_file: path("tls_ca_file")?,
            tls_cert_file: path("tls_cert_file")?,
            tls_key_file: path("tls_key_file")?,
            connect_timeout: millis("connect_timeout_ms", 5_000)?,
            request_timeout: millis("request_timeout_ms", 5_000)?,
            stream: opts.get("stream")?,
            api: opts.get::<Option<bool>>("api")?.unwrap_or(true),
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

    /// A Native::DrainedEvents: the Native::ConnectionEvents queued and the number dropped
    /// since the last drain.
    pub fn drain_events(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        let (events, dropped) = rb_self.conn.events.drain();
        let out = ruby.ary_new_capa(events.len());
        for e in events {
            out.push(CONNECTION_EVENT.build(ruby, [
                e.level.into_value_with(ruby),
                e.kind.into_value_with(ruby),
                e.message.into_value_with(ruby),
                e.at.into_value_with(ruby),
            ]))?;
        }
        Ok(DRAINED_EVENTS.build(ruby, [out.as_value(), dropped.into_value_with(ruby)]))
    }

    /// Provisions or verifies the stream (`spec`: a Native::StreamSpec, Config#stream_spec)
    /// as `how` says (a Symbol, see ruby/topology.rs); returns the report Hash.
    pub fn ensure_stream(ruby: &Ruby, rb_self: &Self, spec: Value, how: Value) -> Result<RHash, Error> {
        let (mode, policy) = topology::how(how)?;
        let spec = stream_spec(ruby, spec, policy)?;
        let conn = rb_self.conn.clone();
        let report = without_gvl(async move { ensure::stream(&conn.js, &spec, mode).await })?.map_err(raise)?;
        topology::report_hash(ruby, report)
    }

    /// `stream_info(name, consumers = false)`: the stream's info as JSON, or nil when it
    /// does not exist; with `consumers` true, the info of every consumer on the stream
    /// under "consumers" too (CONSUMER.LIST, all pages), for the dashboard.
    pub fn stream_info(&self, args: &[Value]) -> Result<Option<String>, Error> {
        let args = scan_args::<(String,), (Option<bool>,), (), (), (), ()>(args)?;
        let (name,) = args.required;
        let with_consumers = args.optional.0.unwrap_or(false);
        let conn = (*self.conn).clone();
        let info = without_gvl(async move {
            let Some(mut info) = stream::stream_info(&conn.js, &name).await? else { return Ok(None) };
            if with_consumers {
                info["consumers"] = serde_json::Value::Array(stream::list_consumers(&conn.js, &name).await?);
            }
            Ok::<_, BridgeError>(Some(info))
        })?
        .map_err(raise)?;
        Ok(info.map(|v| v.to_string()))
    }

    /// The first message of `stream` at or after `seq` (on `subject` when given), as a
    /// Native::StoredMessage (headers as {name => value}, headers_hash; the body binary),
    /// or nil.
    pub fn stream_message(ruby: &Ruby, rb_self: &Self, stream: String, seq: u64, subject: Option<String>) -> Result<Option<Value>, Error> {
        let conn = (*rb_self.conn).clone();
        let found = without_gvl(async move { crate::wire::stored::get(&conn, &stream, seq, subject.as_deref()).await })?.map_err(raise)?;
        let Some(message) = found else { return Ok(None) };
        let headers = headers_hash(ruby, crate::wire::headers::parse_block(&message.header_block))?;
        Ok(Some(STORED_MESSAGE.build(ruby, [
            message.seq.into_value_with(ruby),
            message.subject.into_value_with(ruby),
            headers.as_value(),
            ruby.str_from_slice(&message.body).as_value(),
            message.time.into_value_with(ruby),
        ])))
    }

    /// Deletes message `seq` from `stream`; false when it was not there.
    pub fn delete_message(&self, stream: String, seq: u64) -> Result<bool, Error> {
        let conn = (*self.conn).clone();
        without_gvl(async move { crate::wire::stored::delete(&conn, &stream, seq).await })?.map_err(raise)
    }

    /// Publishes one event and waits for its ack: `event` is publish arguments (a Hash the
    /// core builds) or a Native::BuiltEvent (see publish_items.rs); `defaults` a
    /// Native::EventDefaults. False (nothing sent) when Ruby must build the event; a
    /// Native::Published once acked. A failed publish raises its error carrying the event
    /// built (Error#unsent_event, a Native::BuiltEvent), which Ruby's retries send again.
    pub fn publish_event(ruby: &Ruby, rb_self: &Self, event: Value, defaults: Value) -> Result<Value, Error> {
        let defaults = publish_items::defaults(ruby, defaults)?;
        let Some(event) = publish_items::read(ruby, event, &defaults)? else { return Ok(ruby.qfalse().as_value()) };
        check_size(rb_self, event.event_id(), event.json().len(), event.headers())?;
        let (msg, given) = event.into_outgoing(defaults.subject)?;
        let conn = (*rb_self.conn).clone();
        // The message comes back with the result: a failed attempt hands it to Ruby.
        let (result, msg) = without_gvl(async move { (publisher::publish(&conn, &msg).await, msg) })?;
        let e = match result {
            Ok(ack) => {
                crate::publish::body_buffer::give_back(msg.body);
                return Ok(PUBLISHED.build(ruby, [
                    ack.stream.into_value_with(ruby),
                    ack.sequence.into_value_with(ruby),
                    ack.duplicate.into_value_with(ruby),
                    msg.msg_id.into_value_with(ruby),
                    msg.subject.into_value_with(ruby),
                    1.into_value_with(ruby),
                ]));
            }
            Err(e) => e,
        };
        // Built here, the envelope is UTF-8 text (a String before it became Bytes).
        let unsent = given.unwrap_or_else(|| {
            BUILT_EVENT.build(ruby, [
                msg.subject.into_value_with(ruby),
                msg.msg_id.into_value_with(ruby),
                ruby.str_new(&String::from_utf8_lossy(&msg.body)).as_value(),
                ruby.qnil().as_value(),
            ])
        });
        Err(match e.to_exception_with(ruby, Some(unsent)) {
            Ok(exception) => Error::from(exception),
            Err(error) => error,
        })
    }

    /// Publishes many events (each publish arguments or a Native::BuiltEvent, see
    /// publish_items.rs) with up to `window` acks in flight. Nil (nothing sent) when Ruby
    /// must build any of them; otherwise a Native::BatchOutcome, its failures
    /// Native::Failures (index, error class, message). Every event is built before any is
    /// sent, packed tightly (batch_arena.rs), then sent in parts of PART_SIZE, each part's
    /// memory freed once it is acked. An event the server would refuse (publish::size)
    /// raises before anything is sent when `all_or_nothing` (publish_batch's contract);
    /// otherwise (the outbox) it is a failure of its own, not sent, and the others go.
    pub fn publish_events(ruby: &Ruby, rb_self: &Self, events: RArray, defaults: Value, window: usize, all_or_nothing: bool) -> Result<Option<Value>, Error> {
        let defaults = publish_items::defaults(ruby, defaults)?;
        let default_subject = defaults.subject.to_string()?;
        let max_payload = Some(rb_self.conn.client.max_payload());
        let mut arena = crate::publish::batch_arena::Arena::for_events(events.len());
        let mut packed = Vec::with_capacity(events.len());
        // By index, not by slice: building may call Ruby (Float#to_s), which may run the GC.
        for i in 0..events.len() {
            let Some(event) = publish_items::read(ruby, events.entry(i as isize)?, &defaults)? else { return Ok(None) };
            let refused = match size::check(event.event_id(), event.json().len(), event.headers(), max_payload) {
                Err(e) if all_or_nothing => return Err(raise(in_batch(e, i))), // before anything is sent
                checked => checked.err(),
            };
            packed.push(Packed {
                subject: event.subject().map(Box::from),
                body_and_id: arena.copy_pair(event.json(), event.event_id().as_bytes()),
                body_len: event.json().len(),
                headers: event.headers().cloned(),
                refused,
            });
            if let publish_items::Event::Built(built) = event {
                crate::publish::body_buffer::keep(built.json); // the next event is built in the same buffer
            }
        }
        drop(arena);
        let total = packed.len();
        let (event_ids, failures) = (ruby.ary_new_capa(total), ruby.ary_new());
        let mut duplicates = 0;
        let mut denials = publisher::Denials::watch();
        let mut rest = packed.into_iter();
        for start in (0..total).step_by(PART_SIZE) {
            let mut part = Vec::with_capacity(PART_SIZE.min(total - start));
            let mut sent = Vec::with_capacity(PART_SIZE.min(total - start));
            for (index, p) in (start..).zip(rest.by_ref().take(PART_SIZE)) {
                let (msg, refused) = p.into_outgoing(&default_subject);
                event_ids.push(msg.msg_id.as_str())?;
                match refused {
                    Some(e) => failures.push(failure_value(ruby, index, e))?,
                    None => {
                        part.push(msg);
                        sent.push(index);
                    }
                }
            }
            let (results, back) = send_part(rb_self, part, window, denials)?;
            denials = back;
            for (index, result) in sent.into_iter().zip(results) {
                match result {
                    Ok(ack) => duplicates += ack.duplicate as usize,
                    Err(e) => failures.push(failure_value(ruby, index, e))?,
                }
            }
        }
        release_freed_memory(total);
        Ok(Some(BATCH_OUTCOME.build(ruby, [event_ids.as_value(), duplicates.into_value_with(ruby), failures.as_value()])))
    }

    /// Creates or updates the durable (opts: a Native::LoopOptions); returns a
    /// Native::DurableReport.
    pub fn ensure_consumer(ruby: &Ruby, rb_self: &Self, opts: Value) -> Result<Value, Error> {
        let spec = consumer_spec(&loop_options(ruby, opts)?)?;
        let conn = (*rb_self.conn).clone();
        let report = without_gvl(async move { crate::topology::durable::ensure_consumer(&conn.js, &spec, None).await })?.map_err(raise)?;
        Ok(DURABLE_REPORT.build(ruby, [report.action.to_string().into_value_with(ruby), report.changes.into_value_with(ruby)]))
    }

    /// Starts a pull loop on this connection (opts: a Native::LoopOptions, see consumer.rs).
    pub fn pull_loop(ruby: &Ruby, rb_self: &Self, opts: Value) -> Result<Consumer, Error> {
        Consumer::start(ruby, (*rb_self.conn).clone(), opts)
    }

    /// Closes the connection after flushing what was sent.
    pub fn close(&self) -> Result<(), Error> {
        let conn = (*self.conn).clone();
        without_gvl(async move { conn.close().await })?
            .map_err(|e| raise(BridgeError::new(Kind::Connection, format!("close failed: {e}"))))
    }
}
