//! The NATS connection: options, connect, reconnect without limit, and connection events.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{jetstream, ConnectErrorKind, ConnectOptions, ServerAddr};
use tokio::sync::watch;

use crate::errors::{BridgeError, Kind, Result};
use crate::wire::ack_loss::{follow_leader_elections, AckLoss, StopOnDrop};
use crate::wire::events::EventLog;
use crate::redact::{redact_url, register, userinfo_span};

/// Everything needed to connect, already validated by Ruby's Config. Its Debug shows no
/// secret (see below).
#[derive(Clone, Default)]
pub struct ConnectSpec {
    pub urls: Vec<String>,
    pub name: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Bound on every JetStream API request, and on a publish with its resends.
    pub request_timeout: Duration,
    /// The bridge's stream, whose leader elections make publishes waiting for acks send again.
    pub stream: Option<String>,
    /// May the core ask the JetStream API on its own (verify_topology)? When false it
    /// only publishes, pulls and acks.
    pub api: bool,
}

impl Connection {
    /// Connected, and not closed: async-nats reports a drained connection as connected
    /// until its task ends (which it may never do while a handle lives).
    pub fn is_connected(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Closes the connection: what was sent is flushed, subscriptions end (a drain), and
    /// from now on it counts as not connected.
    pub async fn close(&self) -> std::result::Result<(), async_nats::client::DrainError> {
        self.closed.store(true, Ordering::Release);
        self.client.drain().await
    }

    /// Whether the server this connection talks to is at least `major.minor`.
    pub fn server_at_least(&self, major: u64, minor: u64) -> bool {
        let version = self.client.server_info().version;
        let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
        let (server_major, server_minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (server_major, server_minor) >= (major, minor)
    }
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |secret: &Option<String>| secret.as_ref().map(|_| crate::redact::MASK);
        f.debug_struct("ConnectSpec")
            .field("urls", &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>())
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &masked(&self.password))
            .field("token", &masked(&self.token))
            .field("nkey_seed", &masked(&self.nkey_seed))
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("stream", &self.stream)
            .field("api", &self.api)
            .finish()
    }
}

/// A live connection and its JetStream context.
pub struct Connection {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub events: Arc<EventLog>,
    pub connected_at: Arc<Mutex<Option<String>>>,
    /// Counts lost connections, so a pull in flight learns at once that it is cut short.
    pub disconnects: Arc<watch::Sender<u64>>,
    /// Raised when acks in flight may be lost (a reconnect, a leader election): publishes
    /// waiting for one send again (see wire/ack_loss.rs).
    pub ack_loss: Arc<AckLoss>,
    /// Bound on a publish, resends included.
    pub request_timeout: Duration,
    /// See ConnectSpec::api.
    pub api: bool,
    /// Set by close.
    closed: AtomicBool,
    /// Follows the stream's leader elections while the connection lives.
    _elections: Option<StopOnDrop>,
}

/// Parses the URL list, registering any user info as a secret.
pub fn parse_urls(urls: &[String]) -> Result<Vec<ServerAddr>> {
    if urls.is_empty() {
        return Err(BridgeError::new(Kind::Configuration, "nats_urls is empty"));
    }
    urls.iter()
        .map(|url| {
            // Up to the last '@': a password may hold '@' (see redact::userinfo_span).
            if let Some(userinfo) = userinfo_span(url).map(|(start, at)| &url[start..at]) {
                register(userinfo);
                register(&percent_decode(userinfo));
                if let Some((_, pass)) = userinfo.split_once(':') {
                    register(pass);
                    register(&percent_decode(pass));
                }
            }
            tls_spelled_plainly(url).parse::<ServerAddr>().map_err(|e| {
                BridgeError::new(
                    Kind::Configuration,
                    format!("nats_urls has an invalid URL {:?}: {e}", redact_url(url)),
                )
            })
        })
        .collect()
}

/// `nats+tls://` (how the pure-Ruby gem and other clients write a TLS-only server) as
/// async-nats writes it, `tls://`: TLS required.
fn tls_spelled_plainly(url: &str) -> std::borrow::Cow<'_, str> {
    const NATS_TLS: &str = "nats+tls://";
    match url.get(..NATS_TLS.len()) {
        Some(scheme) if scheme.eq_ignore_ascii_case(NATS_TLS) => format!("tls://{}", &url[NATS_TLS.len()..]).into(),
        _ => url.into(),
    }
}

/// Connects (bounded by `connect_timeout` per server), then reconnects forever.
pub async fn connect(spec: ConnectSpec) -> Result<Connection> {
    let servers = parse_urls(&spec.urls)?;
    let events = Arc::new(EventLog::default());
    let connected_at = Arc::new(Mutex::new(None));
    let disconnects = Arc::new(watch::channel(0u64).0);
    let ack_loss = Arc::new(AckLoss::new());
    // Reply subjects under a prefix of this connection's own. async-nats names inboxes
    // with a thread-local generator, which a forked child copies from its parent: two
    // workers forked from one process would share reply subjects and read each other's acks.
    let mut prefix_bytes = [0u8; 12];
    crate::runtime::random::fill(&mut prefix_bytes).map_err(|e| BridgeError::new(Kind::Connection, e))?;
    let mut options = ConnectOptions::new()
        .custom_inbox_prefix({
            let mut prefix = String::from("_INBOX.");
            crate::runtime::random::push_hex(&mut prefix, &prefix_bytes);
            prefix
        })
        .name(&spec.name)
        .max_reconnects(None)
        .connection_timeout(spec.connect_timeout)
        .request_timeout(Some(spec.request_timeout))
        .event_callback({
            let events = events.clone();
            let connected_at = connected_at.clone();
            let disconnects = disconnects.clone();
            let ack_loss = ack_loss.clone();
            move |event| {
                let events = events.clone();
                let connected_at = connected_at.clone();
                let disconnects = disconnects.clone();
                let ack_loss = ack_loss.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => disconnects.send_modify(|count| *count += 1),
                        // Acks of publishes sent before the drop went to the old connection:
                        // send them again now that the new one can carry them.
                        async_nats::Event::Connected => ack_loss.raise(),
                        _ => {}
                    }
                    record(&events, &connected_at, event)
                }
            }
        });
    let explicit_auth = spec.user.is_some() || spec.token.is_some() || spec.nkey_seed.is_some() || spec.credentials_file.is_some();
    if !explicit_auth {
        // async-nats does not use credentials embedded in server URLs: apply them here.
        // `user:pass@` is user/password, a lone `token@` is a token.
        if let Some(addr) = servers.iter().find(|a| a.username().is_some()) {
            let user = percent_decode(addr.username().unwrap_or_default());
            options = match addr.password() {
                Some(pass) => options.user_and_password(user, percent_decode(pass)),
                None => options.token(user),
            };
        }
    }
    if let (Some(user), Some(password)) = (&spec.user, &spec.password) {
        register(password);
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &spec.token {
        register(token);
        options = options.token(token.clone());
    }
    if let Some(seed) = &spec.nkey_seed {
        register(seed);
        options = options.nkey(seed.clone());
    }
    if let Some(path) = &spec.credentials_file {
        let contents = std::fs::read_to_string(path).map_err(|e| {
            BridgeError::new(Kind::Configuration, format!("credentials file {} could not be read: {e}", path.display()))
        })?;
        // The JWT and the seed are the lines inside the -----BEGIN/END----- blocks.
        let mut inside = false;
        for line in contents.lines().map(str::trim) {
            if line.starts_with("-----BEGIN") {
                inside = true;
            } else if line.starts_with("------END") || line.starts_with("-----END") {
                inside = false;
            } else if inside && !line.is_empty() {
                register(line);
            }
        }
        options = options.credentials(&contents).map_err(|e| {
            BridgeError::new(Kind::Configuration, format!("credentials file {} is not valid: {e}", path.display()))
        })?;
    }
    if let Some(ca) = &spec.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&spec.tls_cert_file, &spec.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }

    let client = options.connect(servers).await.map_err(|e| {
        let kind = match e.kind() {
            ConnectErrorKind::AuthorizationViolation => Kind::Authorization,
            _ => Kind::Connection,
        };
        let urls: Vec<String> = spec.urls.iter().map(|u| redact_url(u)).collect();
        BridgeError::new(kind, format!("could not connect to NATS at {}: {e}", urls.join(", ")))
    })?;
    *crate::sync::lock(&connected_at) = Some(crate::clock::now_iso8601());
    let js = jetstream::ContextBuilder::new()
        .timeout(spec.request_timeout)
        .max_ack_inflight(65_536)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let elections = match &spec.stream {
        Some(stream) => follow_leader_elections(&client, stream, ack_loss.clone()).await,
        None => None,
    };
    Ok(Connection { client, js, events, connected_at, disconnects, ack_loss, request_timeout: spec.request_timeout, api: spec.api, closed: AtomicBool::new(false), _elections: elections })
}

/// Decodes %XX escapes of URL user info (RFC 3986).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn record(events: &EventLog, connected_at: &Mutex<Option<String>>, event: async_nats::Event) {
    use async_nats::Event::*;
    if let ServerError(async_nats::ServerError::Other(message)) = &event {
        crate::wire::events::report_server_error(message);
    }
    let level = match &event {
        Connected => {
            *crate::sync::lock(&connected_at) = Some(crate::clock::now_iso8601());
            "info"
        }
        Disconnected | LameDuckMode | SlowConsumer(_) => "warn",
        ServerError(_) => "error",
        // Repeated on every failed reconnect attempt: a warning, the disconnect says the rest.
        ClientError(_) => "warn",
        Draining | Closed => "info",
    };
    let kind = match &event {
        Connected => "connected",
        Disconnected => "disconnected",
        LameDuckMode => "lame_duck_mode",
        SlowConsumer(_) => "slow_consumer",
        ServerError(_) => "server_error",
        ClientError(_) => "client_error",
        Draining => "draining",
        Closed => "closed",
    };
    events.push(level, kind, &format!("NATS {event}"));
}

#[cfg(test)]
mod tests {
    use super::{parse_urls, percent_decode, ConnectSpec};

    #[test]
    fn nats_tls_urls_require_tls() {
        let urls = ["nats+tls://h:4222", "NATS+TLS://u:p@h:4222", "nats://h:4222"].map(String::from);
        let parsed = parse_urls(&urls).expect("parsed");
        assert_eq!(parsed.iter().map(|a| a.tls_required()).collect::<Vec<_>>(), [true, true, false]);
        assert_eq!(parsed[1].username(), Some("u"));
    }

    #[test]
    fn debug_shows_no_secret() {
        let spec = ConnectSpec {
            urls: vec!["nats://bob:url-secret@h:4222".into()],
            password: Some("pw-secret".into()),
            token: Some("tok-secret".into()),
            nkey_seed: Some("SUSEED".into()),
            ..ConnectSpec::default()
        };
        let shown = format!("{spec:?}");
        for secret in ["url-secret", "pw-secret", "tok-secret", "SUSEED"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("[REDACTED]"));
    }

    #[test]
    fn decodes_url_user_info() {
        assert_eq!(percent_decode("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zzend%4"), "bad%zzend%4");
        assert_eq!(percent_decode("%é%"), "%é%");
    }
}
