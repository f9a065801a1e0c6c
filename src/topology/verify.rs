//! Verifying what an operator provisioned (auto_provision off), with info calls only: the
//! stream covers the bridge's subjects and the durable exists. A difference from the
//! config is reported, never changed; what is missing is a TopologyError naming it.

use async_nats::jetstream;
use serde_json::json;

use crate::errors::{BridgeError, Kind, Result};
use crate::topology::durable::{diff, ConsumerSpec};
use crate::topology::limits::Difference;
use crate::topology::stream::{str_of, stream_info, subjects_of, Plan, Report, StreamSpec};
use crate::topology::subjects::matches;
use crate::wire::api;

/// The stream exists and covers every subject of `spec`; its limits' drift from the spec
/// is in the report ("verified").
pub async fn stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<Report> {
    let Some(info) = stream_info(js, &spec.name).await? else {
        return Err(missing(format!(
            "stream {} does not exist and auto_provision is off: create it with subjects {}",
            spec.name,
            spec.subjects.join(", ")
        )));
    };
    let config = &info["config"];
    let have = subjects_of(config);
    let uncovered: Vec<&str> =
        spec.subjects.iter().filter(|s| !have.iter().any(|p| matches(p, s))).map(String::as_str).collect();
    if !uncovered.is_empty() {
        return Err(missing(format!(
            "stream {} does not cover {} and auto_provision is off: add them to the stream",
            spec.name,
            uncovered.join(", ")
        )));
    }
    let drift = spec.limits.differences(config).iter().map(Difference::drift).collect();
    Ok(Report {
        retention: Some(str_of(&config["retention"])),
        attempts: 1,
        limits_drift: drift,
        ..Report::checked_only(spec, "verified")
    })
}

/// With verify_topology off nothing is asked of the server: the report says so.
pub fn unverified(spec: &StreamSpec) -> Report {
    Report::checked_only(spec, "not verified (verify_topology is off)")
}

impl Report {
    /// A report of a stream that was not changed: every subject counted as covered.
    fn checked_only(spec: &StreamSpec, action: &'static str) -> Report {
        Report {
            stream: spec.name.clone(),
            action,
            plan: Plan { covered: spec.subjects.clone(), ..Plan::default() },
            retention: None,
            attempts: 0,
            notes: Vec::new(),
            limits_changed: Vec::new(),
            limits_drift: Vec::new(),
            loss: None,
        }
    }
}

/// The durable exists; returns how it differs from `spec` (left as is).
pub async fn durable(js: &jetstream::Context, spec: &ConsumerSpec) -> Result<Vec<String>> {
    let subject = format!("CONSUMER.INFO.{}.{}", spec.stream, spec.durable);
    match api::request(js, &subject, &json!({})).await {
        Ok(info) => Ok(diff(&info["config"], spec).0),
        Err(e) if api::is_not_found(&e) => {
            let kind = match &spec.push {
                None => "pull".to_string(),
                Some(push) => format!("push, deliver_subject {}, deliver_group {}", push.subject, push.group),
            };
            Err(missing(format!(
                "durable consumer {} does not exist on stream {} and auto_provision is off: create it ({kind}, explicit ack, filter_subject {}) or turn auto_provision on",
                spec.durable, spec.stream, spec.filter_subject
            )))
        }
        Err(e) => Err(e),
    }
}

fn missing(message: String) -> BridgeError {
    BridgeError::new(Kind::Topology, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::limits::{Limits, LimitsPolicy};

    #[test]
    fn an_unverified_report_counts_every_subject_covered_and_asks_nothing() {
        let spec = StreamSpec {
            name: "s".into(),
            subjects: vec!["a.b".into(), "a.c".into()],
            duplicate_window: std::time::Duration::from_secs(120),
            replicas: 1,
            retention: "limits".into(),
            limits: Limits::default(),
            limits_policy: LimitsPolicy::Keep,
        };
        let report = unverified(&spec);
        assert_eq!(report.action, "not verified (verify_topology is off)");
        assert_eq!(report.plan.covered, spec.subjects);
        assert!(report.plan.add.is_empty() && report.retention.is_none() && report.attempts == 0);
    }
}
