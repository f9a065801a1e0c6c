//! `JetstreamBridge::Native::Consumer`: the Ruby handle on one pull loop.

use std::sync::Arc;
use std::time::Duration;

use magnus::{method, prelude::*, Error, IntoValue, RArray, RHash, RModule, Ruby, Value};

use crate::runtime::process::ProcessOwned;
use crate::wire::connection::Connection;
use crate::consume::pull_loop::{LoopSpec, PullLoop};
use crate::consume::settle::Settle;
use crate::ruby::convert::{consumer_spec, headers_hash, loop_options, stream_spec};
use crate::ruby::gvl::{without_gvl, without_gvl_handing_off};
use crate::ruby::from_json::parse_event;
use crate::ruby::types::MESSAGE;
use crate::topology::ensure::Mode;
use crate::topology::limits::LimitsPolicy;

/// Leaked in a forked child (ProcessOwned), like Client: a child never touches the
/// parent's runtime.
#[magnus::wrap(class = "JetstreamBridge::Native::Consumer", free_immediately, size)]
pub struct Consumer {
    inner: ProcessOwned<Arc<PullLoop>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if self.inner.is_own() {
            self.inner.request_stop();
        }
    }
}

/// Defines `JetstreamBridge::Native::Consumer` and its methods.
pub fn init(ruby: &Ruby, native: RModule) -> Result<(), Error> {
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

impl Consumer {
    /// Built by Client#pull_loop(opts: a Native::LoopOptions); provisions the durable and
    /// starts fetching.
    pub fn start(ruby: &Ruby, conn: Arc<Connection>, opts: Value) -> Result<Consumer, Error> {
        let opts = loop_options(ruby, opts)?;
        // Config#stream_spec, given with auto_provision: a missing stream is made again,
        // never an existing one's limits changed.
        let stream: Option<Value> = opts.get("stream_spec")?;
        let spec = LoopSpec {
            consumer: consumer_spec(&opts)?,
            stream: stream.map(|s| stream_spec(ruby, s, LimitsPolicy::Keep)).transpose()?,
            batch_size: opts.get("batch_size")?,
            dlq_subject: opts.get("dlq_subject")?,
            mode: Mode::of(opts.get("provision")?, opts.get("verify")?),
            max_handler_time: Duration::from_millis(opts.get("max_handler_time_ms")?),
            concurrency: opts.get::<usize>("concurrency")?.max(1),
        };
        let pull = without_gvl(async move { PullLoop::start(conn, spec).await })?.map_err(|e| e.into_ruby())?;
        Ok(Consumer { inner: ProcessOwned::new(pull) })
    }

    /// Up to `max` messages, waiting at most `wait_ms` for the first: Native::Messages.
    pub fn next_batch(ruby: &Ruby, rb_self: &Self, max: usize, wait_ms: u64) -> Result<RArray, Error> {
        let pull = (*rb_self.inner).clone();
        let batch = without_gvl_handing_off(async move { pull.next_batch(max, Duration::from_millis(wait_ms)).await })?
            .map_err(|e| e.into_ruby())?;
        let out = ruby.ary_new_capa(batch.len());
        let nil = ruby.qnil().as_value();
        for d in batch {
            let (event, error) = match parse_event(&d.body)? {
                Ok(v) => (v, nil),
                Err(e) => (nil, e.into_value_with(ruby)),
            };
            let subject = crate::ruby::from_json::interned(d.subject.as_str())?;
            out.push(MESSAGE.build(ruby, [
                d.id.into_value_with(ruby),
                subject,
                event,
                d.deliveries.into_value_with(ruby),
                error,
                d.msg_id.into_value_with(ruby),
                d.stream_seq.into_value_with(ruby),
            ]))?;
        }
        Ok(out)
    }

    /// The handler is about to run for this message; false when it was given back (skip it).
    pub fn claim(&self, id: u64) -> bool {
        self.inner.claim(id)
    }

    /// The handler of this message returned; its ack comes later (after a batch commit).
    pub fn returned(&self, id: u64) {
        self.inner.returned(id)
    }

    /// The headers of an unsettled message ({name => value}, headers_hash), or nil once it
    /// is settled. Read on demand: most handlers never ask.
    pub fn headers(ruby: &Ruby, rb_self: &Self, id: u64) -> Result<Option<RHash>, Error> {
        rb_self.inner.headers(id).map(|pairs| headers_hash(ruby, pairs)).transpose()
    }

    pub fn ack(&self, id: u64) -> bool {
        self.inner.settle(id, Settle::Ack)
    }

    /// NAK, redelivered after `delay_ms` (nil: at once).
    pub fn nak(&self, id: u64, delay_ms: Option<u64>) -> bool {
        self.inner.settle(id, Settle::Nak(delay_ms.map(Duration::from_millis)))
    }

    pub fn term(&self, id: u64) -> bool {
        self.inner.settle(id, Settle::Term)
    }

    pub fn dead_letter(&self, id: u64, reason: String, error_class: String, error_message: String) -> Result<bool, Error> {
        let pull = (*self.inner).clone();
        without_gvl(async move { pull.dead_letter(id, &reason, &error_class, &error_message).await })?
            .map_err(|e| e.into_ruby())?;
        Ok(true)
    }

    /// Stops fetching, naks prefetched messages, flushes acks (GVL released).
    pub fn stop(&self) -> Result<(), Error> {
        let pull = (*self.inner).clone();
        without_gvl(async move { pull.stop().await })
    }

    /// Non-blocking stop request; safe from a signal handler.
    pub fn request_stop(&self) {
        self.inner.request_stop();
    }

    /// Whether the handler running now has outlasted max_handler_time.
    pub fn handler_stuck(&self) -> bool {
        self.inner.handler_stuck()
    }
}
