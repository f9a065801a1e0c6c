//! Raw JetStream API requests as JSON values, so stream configs round-trip whole
//! (fields this client version does not model are kept on update).

use async_nats::jetstream::{self, context::RequestErrorKind, response::Response};
use serde_json::Value;

use crate::errors::{from_jetstream, BridgeError, Kind, Result};

/// Sends `$JS.API.<subject>` with `body` and returns the successful response.
pub async fn request(js: &jetstream::Context, subject: &str, body: &Value) -> Result<Value> {
    // A request the account may not make gets no reply, only a server error: fail at once
    // naming the permission instead of waiting for the timeout.
    let denials = crate::wire::events::permission_denials();
    let full_subject = format!("$JS.API.{subject}");
    let answer = tokio::select! {
        answer = js.request(subject.to_string(), body) => answer,
        denial = crate::wire::events::denied(denials, &full_subject) => {
            return Err(BridgeError::new(
                Kind::Authorization,
                format!("permission denied: this account may not publish to {full_subject} ({denial})"),
            ));
        }
    };
    let response: Response<Value> = answer.map_err(|e| {
        match e.kind() {
            RequestErrorKind::NoResponders => BridgeError::new(
                Kind::Topology,
                format!("JetStream is not available ({subject}: no responders); is the server running with -js?"),
            ),
            RequestErrorKind::TimedOut => BridgeError::new(
                Kind::RequestTimeout,
                format!("JetStream API request {subject} timed out"),
            ),
            _ => BridgeError::new(Kind::Connection, format!("JetStream API request {subject} failed: {e}")),
        }
    })?;
    match response {
        Response::Ok(value) => Ok(value),
        Response::Err { error } => Err(from_jetstream(&error, subject)),
    }
}

/// True for the JetStream API error of a missing stream or consumer.
pub fn is_not_found(err: &BridgeError) -> bool {
    err.code == Some(404)
}
