//! The topology call's argument and result: what Ruby asks of the stream (`how`), and the
//! report as the Hash that ensure_topology!, provision! and the logs read (built here only).

use magnus::{prelude::*, value::LazyId, Error, RHash, Ruby, Symbol, Value};

use crate::errors::{BridgeError, Kind};
use crate::topology::ensure::Mode;
use crate::topology::limits::{LimitsPolicy, Loss};
use crate::topology::stream::Report;

static KEEP: LazyId = LazyId::new("keep");
static APPLY: LazyId = LazyId::new("apply");
static APPLY_DELETING: LazyId = LazyId::new("apply_deleting");
static VERIFY: LazyId = LazyId::new("verify");
static UNVERIFIED: LazyId = LazyId::new("unverified");

/// Client#ensure_stream's `how`, a Symbol of Native::TOPOLOGY_HOWS: provision keeping an
/// existing stream's limits (:keep, an app process), applying them (:apply, refused when
/// that would delete stored messages; :apply_deleting, confirmed), only :verify it, or
/// ask nothing (:unverified).
pub fn how(how: Value) -> Result<(Mode, LimitsPolicy), Error> {
    match Symbol::from_value(how) {
        Some(s) if s == KEEP => Ok((Mode::Provision, LimitsPolicy::Keep)),
        Some(s) if s == APPLY => Ok((Mode::Provision, LimitsPolicy::Apply { delete: false })),
        Some(s) if s == APPLY_DELETING => Ok((Mode::Provision, LimitsPolicy::Apply { delete: true })),
        Some(s) if s == VERIFY => Ok((Mode::Verify, LimitsPolicy::Keep)),
        Some(s) if s == UNVERIFIED => Ok((Mode::Off, LimitsPolicy::Keep)),
        _ => Err(BridgeError::new(
            Kind::InvalidArgument,
            format!("topology {}: one of Native::TOPOLOGY_HOWS (:keep, :apply, :apply_deleting, :verify, :unverified)", how.inspect()),
        )
        .into_ruby()),
    }
}

/// The report: {"stream", "action", "added", "covered", "owned_elsewhere" ([[subject,
/// stream], ...]), "retention", "attempts", "notes", "limits_changed", "limits_drift",
/// "deletes" (loss_hash, or nil)}.
pub fn report_hash(ruby: &Ruby, report: Report) -> Result<RHash, Error> {
    let h = ruby.hash_new();
    h.aset("stream", report.stream)?;
    h.aset("action", report.action)?;
    h.aset("added", report.plan.add)?;
    h.aset("covered", report.plan.covered)?;
    let owned = ruby.ary_new();
    for (subject, stream) in report.plan.owned_elsewhere {
        owned.push((subject, stream))?;
    }
    h.aset("owned_elsewhere", owned)?;
    h.aset("retention", report.retention)?;
    h.aset("attempts", report.attempts)?;
    h.aset("notes", report.notes)?;
    h.aset("limits_changed", report.limits_changed)?;
    h.aset("limits_drift", report.limits_drift)?;
    h.aset("deletes", report.loss.map(|loss| loss_hash(ruby, loss)).transpose()?)?;
    Ok(h)
}

/// {"messages", "bytes", "stored", "lines"} of what applying the limits deletes.
fn loss_hash(ruby: &Ruby, loss: Loss) -> Result<RHash, Error> {
    let h = ruby.hash_new();
    h.aset("messages", loss.messages)?;
    h.aset("bytes", loss.bytes)?;
    h.aset("stored", loss.stored)?;
    h.aset("lines", loss.lines)?;
    Ok(h)
}
