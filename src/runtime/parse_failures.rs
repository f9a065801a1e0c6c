//! Tells when async-nats could not parse what the server sent (a delivered message with a
//! malformed header block, see consume/unreadable.rs). The client drops the connection
//! then and says why only through `tracing`: a debug event "disconnected" whose `error` is
//! an `io::ErrorKind::InvalidInput`; no client Event tells it from any other disconnect.
//! A tracing subscriber interested in that one event, and no other, counts them.
//!
//! The subscriber is never the process-wide default: that slot belongs to the process
//! (another Rust extension, the app's own tracing), and taking it would silence theirs. It
//! is the thread-local default only while a thread drives the bridge's runtime (`scope`,
//! entered by runtime::Runtime::block_on and the runtime's background thread): async-nats'
//! connection task, which emits the event, runs only there.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tracing::dispatcher::{DefaultGuard, Dispatch};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{span, Event, Level, Metadata, Subscriber};

static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Made once per process and kept: tracing registers a dispatcher when it is made (a lock
/// and an interest rebuild), and a kept one stays registered, so the interest each call
/// site caches takes it into account.
static WATCH: OnceLock<Dispatch> = OnceLock::new();

/// A second registered dispatcher that enables nothing. With a single one registered,
/// tracing asks only the registering thread's current default what a call site wants:
/// async-nats' disconnect call site first reached on a thread outside a scope (or an
/// interest rebuild there) would be cached as never wanted, or the level filter set to
/// OFF, and the watch would go deaf. With two, every registered dispatcher is asked.
static KEEP_ALL_ASKED: OnceLock<Dispatch> = OnceLock::new();

fn watch() -> &'static Dispatch {
    KEEP_ALL_ASKED.get_or_init(|| Dispatch::new(tracing::subscriber::NoSubscriber::new()));
    WATCH.get_or_init(|| Dispatch::new(ParseFailureWatch))
}

/// Makes the watch the calling thread's default subscriber until the guard drops (the
/// previous default, if any, comes back then). Cheap: a thread-local swap and two atomics.
pub fn scope() -> DefaultGuard {
    tracing::dispatcher::set_default(watch())
}

/// Parse failures since the process started (seen on the runtime's threads).
pub fn count() -> u64 {
    FAILURES.load(Ordering::Acquire)
}

/// The Subscriber methods of one that enables no span: they are never called with one.
macro_rules! no_spans {
    () => {
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    };
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

    no_spans!();
}

#[cfg(test)]
mod tests {
    use super::*;

    // The same call as async-nats' (target set to its crate, as its module path is).
    fn disconnect(error: Option<std::io::Error>) {
        tracing::debug!(target: "async_nats", error = ?error, "disconnected");
    }

    /// FAILURES is one counter: the tests that read it take turns.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn counts_disconnects_for_unparsable_input_only() {
        let _serial = crate::sync::lock(&SERIAL);
        let _watch = scope();
        let before = count();
        disconnect(Some(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset")));
        disconnect(None);
        tracing::debug!(target: "async_nats", error = ?"InvalidInput", "something else");
        assert_eq!(count(), before);
        disconnect(Some(std::io::Error::new(std::io::ErrorKind::InvalidInput, "header isn't valid utf-8")));
        assert_eq!(count(), before + 1);
    }

    /// The runtime's threads (a caller's block_on, the background thread driving a task)
    /// count parse failures, and the process-wide default subscriber is left to another
    /// Rust extension in the process. The only test that sets the global default.
    #[test]
    fn counts_on_the_runtime_threads_without_taking_the_global_default() {
        let _serial = crate::sync::lock(&SERIAL);
        let rt = crate::runtime::get().expect("runtime");
        let unparsable = || disconnect(Some(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad header")));
        // A thread outside the runtime is not watched (and nothing is counted by mistake).
        let before = count();
        std::thread::spawn(unparsable).join().unwrap();
        assert_eq!(count(), before, "a thread outside the runtime was watched: the watch is the process-wide default");
        // In a call (the caller drives the runtime, as a Ruby thread does).
        rt.block_on(async { unparsable() }, crate::runtime::AfterCall::HandOff);
        assert!(count() > before);
        // A task the background thread runs once the call has ended (async-nats' connection
        // task is such a task while Ruby runs Ruby code).
        let before = count();
        let (tx, rx) = std::sync::mpsc::channel();
        rt.block_on(
            async move {
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    unparsable();
                    let _ = tx.send(std::thread::current().name().map(String::from));
                });
            },
            crate::runtime::AfterCall::HandOff,
        );
        let ran_on = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the task ran");
        assert_eq!(ran_on.as_deref(), Some("jetstream-bridge"));
        assert!(count() > before);
        // Another extension's subscriber takes the process-wide slot: it is free, it sees
        // the events of other threads, and the runtime's threads still count.
        assert!(tracing::subscriber::set_global_default(OtherExtension).is_ok(), "the process-wide default subscriber was taken");
        let seen = SEEN_BY_OTHER.load(Ordering::Acquire);
        std::thread::spawn(|| tracing::info!(target: "other_extension", "hello")).join().unwrap();
        assert_eq!(SEEN_BY_OTHER.load(Ordering::Acquire), seen + 1);
        let before = count();
        rt.block_on(async { unparsable() }, crate::runtime::AfterCall::Linger);
        assert_eq!(count(), before + 1);
    }

    static SEEN_BY_OTHER: AtomicU64 = AtomicU64::new(0);

    /// Another Rust extension's subscriber: counts the events it is given.
    struct OtherExtension;

    impl Subscriber for OtherExtension {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn event(&self, event: &Event<'_>) {
            if event.metadata().target() == "other_extension" {
                SEEN_BY_OTHER.fetch_add(1, Ordering::AcqRel);
            }
        }
        no_spans!();
    }
}
