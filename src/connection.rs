//! The NATS connection: options, connect, reconnect without limit, and connection events.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{jetstream, ConnectErrorKind, ConnectOptions, ServerAddr};

use crate::errors::{BridgeError, Kind, Result};
use crate::events::EventLog;
use crate::redact::{redact_url_userinfo, register};

/// Everything needed to connect, already validated by Ruby's Config.
#[derive(Debug, Clone, Default)]
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
    /// Bound on every JetStream API request and publish ack.
    pub request_timeout: Duration,
}

/// A live connection and its JetStream context.
pub struct Connection {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub events: Arc<EventLog>,
    pub connected_at: Arc<Mutex<Option<String>>>,
}

/// Parses the URL list, registering any user info as a secret.
pub fn parse_urls(urls: &[String]) -> Result<Vec<ServerAddr>> {
    if urls.is_empty() {
        return Err(BridgeError::new(Kind::Configuration, "nats_urls is empty"));
    }
    urls.iter()
        .map(|url| {
            if let Some(userinfo) = url.split("://").nth(1).and_then(|rest| rest.split('@').next().filter(|_| rest.contains('@'))) {
                register(userinfo);
                if let Some((_, pass)) = userinfo.split_once(':') {
                    register(pass);
                }
            }
            url.parse::<ServerAddr>().map_err(|e| {
                BridgeError::new(
                    Kind::Configuration,
                    format!("nats_urls has an invalid URL {:?}: {e}", redact_url_userinfo(url)),
                )
            })
        })
        .collect()
}

/// Connects (bounded by `connect_timeout` per server), then reconnects forever.
pub async fn connect(spec: ConnectSpec) -> Result<Connection> {
    let servers = parse_urls(&spec.urls)?;
    let events = Arc::new(EventLog::default());
    let connected_at = Arc::new(Mutex::new(None));
    let mut options = ConnectOptions::new()
        .name(&spec.name)
        .max_reconnects(None)
        .connection_timeout(spec.connect_timeout)
        .request_timeout(Some(spec.request_timeout))
        .event_callback({
            let events = events.clone();
            let connected_at = connected_at.clone();
            move |event| {
                let events = events.clone();
                let connected_at = connected_at.clone();
                async move { record(&events, &connected_at, event) }
            }
        });
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
        for line in contents.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('-')) {
            register(line); // the JWT and the seed
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
        let urls: Vec<String> = spec.urls.iter().map(|u| redact_url_userinfo(u)).collect();
        BridgeError::new(kind, format!("could not connect to NATS at {}: {e}", urls.join(", ")))
    })?;
    *connected_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::envelope::now_iso8601());
    let js = jetstream::ContextBuilder::new()
        .timeout(spec.request_timeout)
        .max_ack_inflight(65_536)
        .backpressure_on_inflight(true)
        .build(client.clone());
    Ok(Connection { client, js, events, connected_at })
}

fn record(events: &EventLog, connected_at: &Mutex<Option<String>>, event: async_nats::Event) {
    use async_nats::Event::*;
    let level = match &event {
        Connected => {
            *connected_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::envelope::now_iso8601());
            "info"
        }
        Disconnected | LameDuckMode | SlowConsumer(_) => "warn",
        ServerError(_) | ClientError(_) => "error",
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
