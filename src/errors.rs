//! Errors of the core, by kind. Each kind stands for a Ruby class of
//! lib/jetstream_bridge/errors.rb, which ruby/raise.rs looks up once when the extension
//! loads and raises (never chosen by parsing messages).

use crate::redact::redact;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value given by the caller is unusable.
    InvalidArgument,
    /// A setting is unusable.
    Configuration,
    /// A setting used as a subject token (or in a stream or durable name) holds a
    /// character NATS reserves.
    InvalidSubject,
    /// No connection to NATS could be made, or it is not established.
    Connection,
    /// Authentication or authorization failed.
    Authorization,
    /// A publish was not acknowledged in time.
    PublishTimeout,
    /// A JetStream API request was not answered in time.
    RequestTimeout,
    /// No stream captures the subject (the server had no responders).
    StreamNotFound,
    /// The stream had no leader for the whole request_timeout (a cluster election).
    StreamUnavailable,
    /// The message is larger than the server's max_payload.
    PayloadTooLarge,
    /// Any other publish failure.
    Publish,
    /// The JetStream API answered with an error (code and err_code attached).
    JetStreamApi,
    /// The stream could not be provisioned.
    Topology,
    /// A consumer operation failed.
    Consumer,
    /// A message could not be moved to the dead-letter queue.
    DlqRouting,
    /// A bug in the core (a caught panic).
    Internal,
}

/// An error with its kind, a redacted message and, for JetStream API errors, the codes.
#[derive(Debug, Clone)]
pub struct BridgeError {
    pub kind: Kind,
    pub message: String,
    pub code: Option<u16>,
    pub err_code: Option<u64>,
}

impl BridgeError {
    pub fn new(kind: Kind, message: impl AsRef<str>) -> BridgeError {
        BridgeError { kind, message: redact(message.as_ref()), code: None, err_code: None }
    }

    pub fn api(code: u16, err_code: u64, message: impl AsRef<str>) -> BridgeError {
        BridgeError {
            kind: Kind::JetStreamApi,
            message: redact(message.as_ref()),
            code: Some(code),
            err_code: Some(err_code),
        }
    }
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, BridgeError>;

/// What a caught panic said (its &str or String payload).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Maps a JetStream API error (from any async-nats error kind carrying one).
pub fn from_jetstream(err: &async_nats::jetstream::Error, context: &str) -> BridgeError {
    BridgeError::api(
        err.code() as u16,
        err.error_code().0,
        format!("{context}: {err}"),
    )
}
