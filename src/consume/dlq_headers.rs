//! The names of the headers a dead-letter copy gets (dead_letter.rs) and a replay adds,
//! defined here only: Ruby reads them as `JetstreamBridge::Native::DLQ_HEADERS`.

/// The copy's own id, `dlq:<stream>:<seq>` (it replaces the original's).
pub const MSG_ID: &str = "Nats-Msg-Id";
pub const REASON: &str = "X-Dead-Letter-Reason";
pub const ERROR_CLASS: &str = "X-Error-Class";
pub const ERROR_MESSAGE: &str = "X-Error-Message";
pub const STREAM_SEQ: &str = "X-Stream-Seq";
pub const ORIGINAL_SUBJECT: &str = "X-Original-Subject";
pub const ORIGINAL_MSG_ID: &str = "X-Original-Msg-Id";
pub const DELIVERIES: &str = "X-Deliveries";
pub const CONSUMER: &str = "X-Consumer";
pub const FAILED_AT: &str = "X-Failed-At";
/// The header block of a message the client could not read (unreadable.rs).
pub const ORIGINAL_HEADERS_BASE64: &str = "X-Original-Headers-Base64";
/// Set by DeadLetters.replay on the event sent again: the dead letter's stream sequence.
pub const REPLAYED_FROM: &str = "X-Replayed-From";

/// Every one, under the key Ruby reads it by (Native::DLQ_HEADERS["reason"]).
pub const ALL: [(&str, &str); 12] = [
    ("msg_id", MSG_ID),
    ("reason", REASON),
    ("error_class", ERROR_CLASS),
    ("error_message", ERROR_MESSAGE),
    ("stream_seq", STREAM_SEQ),
    ("original_subject", ORIGINAL_SUBJECT),
    ("original_msg_id", ORIGINAL_MSG_ID),
    ("deliveries", DELIVERIES),
    ("consumer", CONSUMER),
    ("failed_at", FAILED_AT),
    ("original_headers_base64", ORIGINAL_HEADERS_BASE64),
    ("replayed_from", REPLAYED_FROM),
];
