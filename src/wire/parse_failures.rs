//! Tells when async-nats could not parse what the server sent (a delivered message with a
//! malformed header block, see consume/unreadable.rs). The client drops the connection
//! then and says why only through `tracing`: a debug event "disconnected" whose `error` is
//! an `io::ErrorKind::InvalidInput`; no client Event tells it from any other disconnect.
//! A tracing subscriber interested in that one event, and no other, counts them.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{span, Event, Level, Metadata, Subscriber};

static FAILURES: AtomicU64 = AtomicU64::new(0);
static WATCHING: OnceLock<bool> = OnceLock::new();

/// Starts counting (once per process). False when another tracing subscriber was set
/// first: parse failures then cannot be told from other disconnects.
pub fn watch() -> bool {
    *WATCHING.get_or_init(|| tracing::subscriber::set_global_default(ParseFailureWatch).is_ok())
}

/// Parse failures since the process started, or None when they cannot be counted.
pub fn count() -> Option<u64> {
    watch().then(|| FAILURES.load(Ordering::Acquire))
}

struct ParseFailureWatch;

/// async-nats' `debug!(error = ?err, "disconnected")` in its connection handler.
fn is_disconnect_event(meta: &Metadata<'_>) -> bool {
    meta.is_event() && *meta.level() == Level::DEBUG && meta.target() == "async_nats" && meta.fields().field("error").is_some()
}

/// Reads the event's message and error: a parse failure is a disconnect whose error has
/// the InvalidInput kind (a reset or closed socket has another kind, or none).
#[derive(Default)]
struct DisconnectReason {
    disconnected: bool,
    unparsable: bool,
}

impl Visit for DisconnectReason {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.disconnected = format!("{value:?}") == "disconnected",
            "error" => self.unparsable = format!("{value:?}").contains("InvalidInput"),
            _ => {}
        }
    }
}

impl Subscriber for ParseFailureWatch {
    // Interest is cached per call site: every other tracing call site in the process
    // is disabled once and costs an atomic load afterwards.
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if is_disconnect_event(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        is_disconnect_event(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::DEBUG)
    }

    fn event(&self, event: &Event<'_>) {
        let mut reason = DisconnectReason::default();
        event.record(&mut reason);
        if reason.disconnected && reason.unparsable {
            FAILURES.fetch_add(1, Ordering::AcqRel);
        }
    }

    // No spans are enabled: these are never called with one of ours.
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    // The same call as async-nats' (target set to its crate, as its module path is).
    fn disconnect(error: Option<std::io::Error>) {
        tracing::debug!(target: "async_nats", error = ?error, "disconnected");
    }

    #[test]
    fn counts_disconnects_for_unparsable_input_only() {
        assert!(watch());
        let before = count().unwrap();
        disconnect(Some(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")));
        disconnect(None);
        tracing::debug!(target: "async_nats", error = ?"InvalidInput", "something else");
        assert_eq!(count(), Some(before));
        disconnect(Some(std::io::Error::new(std::io::ErrorKind::InvalidInput, "header isn't valid utf-8")));
        assert_eq!(count(), Some(before + 1));
    }
}
