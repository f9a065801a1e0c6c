//! Core errors as Ruby exceptions: each kind's class (lib/jetstream_bridge/errors.rb) is
//! looked up once when the extension loads (`load`) and chosen by kind, never by parsing
//! messages. What an exception carries besides its message goes through its class's
//! constructor (JetStreamApiError's codes, Error's unsent_event), not set on it afterwards.

use std::sync::OnceLock;

use magnus::{gc, prelude::*, value::Opaque, Error, ExceptionClass, RModule, Ruby, Value};

use crate::errors::{BridgeError, Kind};

/// Every kind, and its class: under JetstreamBridge, but ArgumentError.
const KINDS: [(Kind, &str); 16] = [
    (Kind::InvalidArgument, "ArgumentError"),
    (Kind::Configuration, "ConfigurationError"),
    (Kind::InvalidSubject, "InvalidSubjectError"),
    (Kind::Connection, "ConnectionError"),
    (Kind::Authorization, "AuthorizationError"),
    (Kind::PublishTimeout, "PublishTimeoutError"),
    (Kind::RequestTimeout, "RequestTimeoutError"),
    (Kind::StreamNotFound, "StreamNotFoundError"),
    (Kind::StreamUnavailable, "StreamUnavailableError"),
    (Kind::PayloadTooLarge, "PayloadTooLargeError"),
    (Kind::Publish, "PublishError"),
    (Kind::JetStreamApi, "JetStreamApiError"),
    (Kind::Topology, "TopologyError"),
    (Kind::Consumer, "ConsumerError"),
    (Kind::DlqRouting, "DlqRoutingFailedError"),
    (Kind::Internal, "Error"),
];

static CLASSES: OnceLock<[Opaque<ExceptionClass>; KINDS.len()]> = OnceLock::new();

/// Looks up the class of every kind; the extension fails to load when one is missing.
pub fn load(ruby: &Ruby, bridge: RModule) -> Result<(), Error> {
    let mut classes = Vec::with_capacity(KINDS.len());
    for (i, (kind, name)) in KINDS.iter().enumerate() {
        assert_eq!(*kind as usize, i, "KINDS is in the order of Kind");
        let class = if *kind == Kind::InvalidArgument {
            ruby.exception_arg_error()
        } else {
            bridge.const_get::<_, ExceptionClass>(*name).map_err(|_| {
                Error::new(ruby.exception_load_error(), format!("JetstreamBridge::{name} is not defined: require jetstream_bridge/errors before the core"))
            })?
        };
        gc::register_mark_object(class);
        classes.push(Opaque::from(class));
    }
    let classes: [Opaque<ExceptionClass>; KINDS.len()] = classes.try_into().unwrap_or_else(|_| unreachable!());
    let _ = CLASSES.set(classes);
    Ok(())
}

/// The Ruby class of a kind.
pub fn class_of(ruby: &Ruby, kind: Kind) -> ExceptionClass {
    ruby.get_inner(CLASSES.get().expect("error classes are loaded with the extension")[kind as usize])
}

impl BridgeError {
    /// The Ruby exception (not raised yet). Must be called with the GVL held.
    pub fn to_exception(&self, ruby: &Ruby) -> Result<magnus::Exception, Error> {
        self.to_exception_with(ruby, None)
    }

    /// The exception, carrying `unsent_event` (a Native::BuiltEvent) when given: the event a
    /// failed one-call publish had built, which Ruby's retries send again.
    pub fn to_exception_with(&self, ruby: &Ruby, unsent_event: Option<Value>) -> Result<magnus::Exception, Error> {
        let class = class_of(ruby, self.kind);
        let message = self.message.as_str();
        // Only the bridge's own classes take these (ArgumentError does not).
        let codes = match (self.kind, self.code, self.err_code) {
            (Kind::JetStreamApi, Some(code), Some(err_code)) => Some((code, err_code)),
            _ => None,
        };
        let unsent_event = unsent_event.filter(|_| self.kind != Kind::InvalidArgument);
        if codes.is_none() && unsent_event.is_none() {
            return class.new_instance((message,));
        }
        let options = ruby.hash_new();
        if let Some((code, err_code)) = codes {
            options.aset(ruby.to_symbol("code"), code)?;
            options.aset(ruby.to_symbol("err_code"), err_code)?;
        }
        if let Some(event) = unsent_event {
            options.aset(ruby.to_symbol("unsent_event"), event)?;
        }
        class.new_instance((message, magnus::KwArgs(options)))
    }

    /// The error to raise. Must be called with the GVL held.
    pub fn into_ruby(self) -> Error {
        let ruby = Ruby::get().expect("errors are raised with the GVL held");
        match self.to_exception(&ruby) {
            Ok(exception) => Error::from(exception),
            Err(e) => e,
        }
    }
}
