//! The topology call's argument and result: what Ruby asks of the stream (`how`), and the
//! report as the Hash that ensure_topology!, provision! and the logs read (built here only).

use magnus::{Error, RHash, Ruby};

use crate::errors::{BridgeError, Kind};
use crate::topology::ensure::Mode;
use crate::topology::limits::{LimitsPolicy, Loss};
use crate::topology::stream::Report;

/// Client#ensure_stream's `how`: provision keeping an existing stream's limits ("keep":
/// an app process), applying them ("apply": refused when that would delete stored
/// messages; "apply_deleting": confirmed), or only "verify" it, or ask nothing ("unverified").
pub fn how(name: &str) -> Result<(Mode, LimitsPolicy), Error> {
    match name {
        "keep" => Ok((Mode::Provision, LimitsPolicy::Keep)),
        "apply" => Ok((Mode::Provision, LimitsPolicy::Apply { delete: false })),
        "apply_deleting" => Ok((Mode::Provision, LimitsPolicy::Apply { delete: true })),
        "verify" => Ok((Mode::Verify, LimitsPolicy::Keep)),
        "unverified" => Ok((Mode::Off, LimitsPolicy::Keep)),
        _ => Err(BridgeError::new(
            Kind::InvalidArgument,
            format!("topology {name:?}: keep, apply, apply_deleting, verify or unverified"),
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
