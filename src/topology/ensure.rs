//! The one way in to the topology: the stream and the durable provisioned, verified or
//! left alone, as the settings say (Mode), for Ruby's connection and the pull loop alike.

use async_nats::jetstream;

use crate::errors::Result;
use crate::topology::durable::{ensure_consumer, ConsumerSpec};
use crate::topology::stream::{ensure_stream, Report, StreamSpec};
use crate::topology::verify;
use crate::wire::connection::Connection;

/// What the bridge does to the stream and the durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create or update them (auto_provision, or the provision task).
    Provision,
    /// Check them with info calls only (auto_provision off).
    Verify,
    /// Ask the server nothing (verify_topology off).
    Off,
}

impl Mode {
    /// The mode of the auto_provision and verify_topology settings.
    pub fn of(auto_provision: bool, verify_topology: bool) -> Mode {
        match (auto_provision, verify_topology) {
            (true, _) => Mode::Provision,
            (false, true) => Mode::Verify,
            (false, false) => Mode::Off,
        }
    }
}

/// The stream in `mode`; the report says what was done or found.
pub async fn stream(js: &jetstream::Context, spec: &StreamSpec, mode: Mode) -> Result<Report> {
    match mode {
        Mode::Provision => ensure_stream(js, spec).await,
        Mode::Verify => verify::stream(js, spec).await,
        Mode::Off => Ok(verify::unverified(spec)),
    }
}

/// The durable in `mode`, what happened recorded as connection events. Provisioning
/// recreates the stream too when it is gone and `stream` is given; `resume_at`: where a
/// durable that has disappeared is recreated from, so acked history is not replayed.
pub async fn durable(conn: &Connection, spec: &ConsumerSpec, stream: Option<&StreamSpec>, mode: Mode, resume_at: Option<u64>) -> Result<()> {
    match mode {
        Mode::Off => Ok(()),
        Mode::Verify => {
            let changes = verify::durable(&conn.js, spec).await?;
            if !changes.is_empty() {
                let message = format!("consumer {} differs from the config (auto_provision is off, left as is): {}", spec.durable, changes.join(", "));
                conn.events.push("warn", "consumer_mismatch", &message);
            }
            Ok(())
        }
        Mode::Provision => provision_durable(conn, spec, stream, resume_at).await,
    }
}

async fn provision_durable(conn: &Connection, spec: &ConsumerSpec, stream: Option<&StreamSpec>, resume_at: Option<u64>) -> Result<()> {
    let report = match (ensure_consumer(&conn.js, spec, resume_at).await, stream) {
        (Err(e), Some(stream)) if e.code == Some(404) => {
            let r = ensure_stream(&conn.js, stream).await?;
            conn.events.push("warn", "stream_provisioned", &format!("stream {} was missing: {}", r.stream, r.action));
            ensure_consumer(&conn.js, spec, resume_at).await?
        }
        (other, _) => other?,
    };
    if report.action != "unchanged" {
        let message = if report.changes.is_empty() {
            format!("consumer {} {}", spec.durable, report.action)
        } else {
            format!("consumer {} {}: {}", spec.durable, report.action, report.changes.join(", "))
        };
        conn.events.push("info", "consumer_provisioned", &message);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_wins_over_verifying() {
        assert_eq!(Mode::of(true, true), Mode::Provision);
        assert_eq!(Mode::of(false, true), Mode::Verify);
        assert_eq!(Mode::of(false, false), Mode::Off);
    }
}
