//! Overlap-safe stream provisioning.
//!
//! One stream per env must cover the bridge's subjects. Subjects already covered by the
//! stream's own wildcards are not added again; subjects another stream owns are left out
//! (NATS refuses overlapping streams) and reported. A create/update that loses a race with
//! another process is retried on the overlap/name-in-use error codes only; every other
//! server error is returned to the caller. An existing stream's limits change only under
//! LimitsPolicy::Apply (limits.rs says why).

use std::time::Duration;

use async_nats::jetstream;
use serde_json::{json, Value};

use crate::wire::api;
use crate::errors::{BridgeError, Kind, Result};
use crate::topology::limits::{self, Difference, Limits, LimitsPolicy, Loss};
use crate::topology::subjects::{covers, overlap};

/// JetStream err_codes that mean "someone else changed the streams meanwhile".
const RACE_ERR_CODES: [u64; 2] = [
    10065, // subjects overlap with an existing stream
    10058, // stream name already in use with a different configuration
];
/// Rounds of read-modify-write before giving up: several apps (or processes) provisioning
/// one stream at once each overwrite the others' subjects until they go round again.
const ATTEMPTS: usize = 12;

/// The pauses after our update before each look at whether our subjects are still there.
const VERIFY_PAUSES: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(250)];

/// Whether `added` are all still covered by the stream after each pause.
async fn still_covered(js: &jetstream::Context, spec: &StreamSpec, added: &[String], pauses: [Duration; 2]) -> Result<bool> {
    for pause in pauses {
        tokio::time::sleep(jittered(pause)).await;
        let now = stream_info(js, &spec.name).await?.map(|i| subjects_of(&i["config"])).unwrap_or_default();
        if !added.iter().all(|s| now.iter().any(|p| covers(p, s))) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A pause of `base` plus up to as much again at random, so writers that collided spread out.
fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = crate::runtime::random::fill(&mut byte);
    base + base.mul_f64(byte[0] as f64 / 255.0)
}

/// Desired state of the bridge's stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub duplicate_window: Duration,
    pub replicas: usize,
    /// The retention the stream gets when the bridge creates it ("limits" or "workqueue":
    /// Layout::retention); an existing stream keeps its own.
    pub retention: String,
    pub limits: Limits,
    /// Whether an existing stream's limits may change (only the operator's provision task).
    pub limits_policy: LimitsPolicy,
}

/// What to do with each desired subject.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<String>,
    pub covered: Vec<String>,
    /// (subject, stream that owns it)
    pub owned_elsewhere: Vec<(String, String)>,
}

/// Decides, per desired subject, whether it is covered, owned elsewhere, or to be added.
pub fn plan(desired: &[String], ours: &[String], others: &[(String, Vec<String>)]) -> Plan {
    let mut plan = Plan::default();
    for subject in desired {
        if plan.add.contains(subject) || plan.covered.contains(subject) {
            continue;
        }
        if ours.iter().any(|p| covers(p, subject)) {
            plan.covered.push(subject.clone());
        } else if let Some((stream, _)) =
            others.iter().find(|(_, subs)| subs.iter().any(|p| overlap(p, subject)))
        {
            plan.owned_elsewhere.push((subject.clone(), stream.clone()));
        } else {
            plan.add.push(subject.clone());
        }
    }
    plan
}

/// The outcome, returned to Ruby for logging and health checks.
#[derive(Debug)]
pub struct Report {
    pub stream: String,
    /// "created", "updated", "unchanged", "skipped" (every subject owned elsewhere) or
    /// "refused" (applying the limits would delete stored messages: nothing was changed).
    pub action: &'static str,
    pub plan: Plan,
    /// The stream's retention; None when nothing was asked of the server (Mode::Off).
    pub retention: Option<String>,
    pub attempts: usize,
    /// Differences from the desired state that provisioning leaves alone (for the log).
    pub notes: Vec<String>,
    /// Limits changed on an existing stream ("max_age no limit -> 604800s").
    pub limits_changed: Vec<String>,
    /// Limits of an existing stream that differ from the spec's, left alone
    /// ("max_msgs: stream no limit, configured 10").
    pub limits_drift: Vec<String>,
    /// What applying the limits deletes (or would: "refused"); None when none were applied.
    pub loss: Option<Loss>,
}

/// Brings the stream to cover `spec.subjects`, within the rules above.
pub async fn ensure_stream(js: &jetstream::Context, spec: &StreamSpec) -> Result<Report> {
    let mut last_race = None;
    for attempt in 1..=ATTEMPTS {
        let streams = list_streams(js).await?;
        let ours = streams.iter().find(|s| s["config"]["name"] == spec.name.as_str());
        let others: Vec<(String, Vec<String>)> = streams
            .iter()
            .filter(|s| s["config"]["name"] != spec.name.as_str())
            .map(|s| (str_of(&s["config"]["name"]), subjects_of(&s["config"])))
            .collect();
        let our_subjects = ours.map(|s| subjects_of(&s["config"])).unwrap_or_default();
        let mut notes = Vec::new();
        if let Some(replicas) = ours.and_then(|s| s["config"]["num_replicas"].as_u64()) {
            if replicas as usize != spec.replicas {
                notes.push(format!(
                    "stream {} has {replicas} replica(s) but stream_replicas is {}; not changed (scale it with the nats CLI)",
                    spec.name, spec.replicas
                ));
            }
        }
        let plan = plan(&spec.subjects, &our_subjects, &others);

        let differences = ours.map(|info| spec.limits.differences(&info["config"])).unwrap_or_default();
        let drift: Vec<String> = differences.iter().map(Difference::drift).collect();
        // An existing stream's limits change only when the operator's provision applies
        // them: lowering one deletes stored messages at once, every app's (limits.rs).
        let mut loss = None;
        if let (Some(info), LimitsPolicy::Apply { delete }, false) = (ours, spec.limits_policy, differences.is_empty()) {
            let estimate = limits::loss(js, &spec.name, info, &differences).await?;
            if estimate.messages > 0 && !delete {
                let retention = str_of(&info["config"]["retention"]);
                return Ok(Report { stream: spec.name.clone(), action: "refused", plan, retention: Some(retention), attempts: attempt, notes,
                                   limits_changed: Vec::new(), limits_drift: drift, loss: Some(estimate) });
            }
            loss = Some(estimate);
        }
        let apply_limits = loss.is_some();
        let limits_changed: Vec<String> = if apply_limits { differences.iter().map(Difference::change).collect() } else { Vec::new() };
        let limits_drift = if apply_limits { Vec::new() } else { drift };
        let outcome = match ours {
            None if plan.add.is_empty() => Ok(("skipped", spec.retention.clone())),
            None => create(js, spec, &plan.add).await.map(|_| ("created", spec.retention.clone())),
            Some(info) => {
                let retention = str_of(&info["config"]["retention"]);
                if plan.add.is_empty() && !apply_limits {
                    Ok(("unchanged", retention))
                } else {
                    update(js, &info["config"], &plan.add, apply_limits.then_some(&spec.limits)).await.map(|_| ("updated", retention))
                }
            }
        };
        let report = |action, retention, plan| Report {
            stream: spec.name.clone(),
            action,
            plan,
            retention: Some(retention),
            attempts: attempt,
            notes: notes.clone(),
            limits_changed: limits_changed.clone(),
            limits_drift: limits_drift.clone(),
            loss: None,
        };
        match outcome {
            Ok((action, retention)) if action == "unchanged" || action == "skipped" || plan.add.is_empty() => {
                return Ok(Report { loss, ..report(action, retention, plan) });
            }
            Ok((action, retention)) => {
                // Updates are read-modify-write without a version check: another app adding
                // its own subjects at the same moment can overwrite ours, also after a first
                // look (its read came before our write, its write lands later). Look after a
                // short pause and again after a writer's read-to-write time on a loaded
                // machine; go round once more if ours are gone.
                if still_covered(js, spec, &plan.add, VERIFY_PAUSES).await? {
                    return Ok(Report { loss, ..report(action, retention, plan) });
                }
                last_race = Some(BridgeError::new(Kind::Topology, "a concurrent update replaced the subjects"));
                tokio::time::sleep(jittered(Duration::from_millis(25 * attempt as u64))).await;
            }
            Err(e) if e.err_code.is_some_and(|c| RACE_ERR_CODES.contains(&c)) => {
                last_race = Some(e);
                tokio::time::sleep(jittered(Duration::from_millis(25 * attempt as u64))).await;
            }
            Err(e) => return Err(e),
        }
    }
    let last = last_race.map(|e| e.message).unwrap_or_default();
    Err(BridgeError::new(
        Kind::Topology,
        format!("stream {} could not be provisioned after {ATTEMPTS} attempts racing other writers: {last}", spec.name),
    ))
}

/// Info of every stream on the account (all pages).
pub async fn list_streams(js: &jetstream::Context) -> Result<Vec<Value>> {
    list_all(js, "STREAM.LIST", "streams").await
}

/// Info of every consumer on the stream (all pages).
pub async fn list_consumers(js: &jetstream::Context, stream: &str) -> Result<Vec<Value>> {
    list_all(js, &format!("CONSUMER.LIST.{stream}"), "consumers").await
}

/// Every item of a paged JetStream list request (`key`: the page's array).
async fn list_all(js: &jetstream::Context, subject: &str, key: &str) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    loop {
        let page = api::request(js, subject, &json!({ "offset": all.len() })).await?;
        let items = page[key].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0) as usize;
        let got = items.len();
        all.extend(items);
        if got == 0 || all.len() >= total {
            return Ok(all);
        }
    }
}

/// Info of one stream, or None when it does not exist.
pub async fn stream_info(js: &jetstream::Context, name: &str) -> Result<Option<Value>> {
    match api::request(js, &format!("STREAM.INFO.{name}"), &json!({})).await {
        Ok(info) => Ok(Some(info)),
        Err(e) if api::is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn create(js: &jetstream::Context, spec: &StreamSpec, subjects: &[String]) -> Result<Value> {
    let mut config = json!({
        "name": spec.name,
        "subjects": subjects,
        "retention": spec.retention,
        "storage": "file",
        "discard": "old",
        "num_replicas": spec.replicas,
        // JetStream durations are nanoseconds on the wire.
        "duplicate_window": spec.duplicate_window.as_nanos() as u64,
        "max_consumers": -1,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msg_size": -1,
    });
    spec.limits.apply(&mut config);
    api::request(js, &format!("STREAM.CREATE.{}", spec.name), &config).await
}

/// Adds `add` to the stream's subjects, and applies `limits` when given; the rest of its
/// config is sent back as it is.
async fn update(js: &jetstream::Context, current: &Value, add: &[String], limits: Option<&Limits>) -> Result<Value> {
    let mut config = current.clone();
    let mut subjects = subjects_of(current);
    subjects.extend(add.iter().cloned());
    config["subjects"] = json!(subjects);
    if let Some(limits) = limits {
        limits.apply(&mut config);
    }
    api::request(js, &format!("STREAM.UPDATE.{}", str_of(&current["name"])), &config).await
}

/// A stream config's subjects.
pub(super) fn subjects_of(config: &Value) -> Vec<String> {
    config["subjects"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub(super) fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn new_stream_takes_every_free_subject() {
        let p = plan(&s(&["dev.a.sync.b", "dev.b.sync.a", "dev.sync.dlq"]), &[], &[]);
        assert_eq!(p.add, s(&["dev.a.sync.b", "dev.b.sync.a", "dev.sync.dlq"]));
    }

    #[test]
    fn covered_subjects_are_not_added_again() {
        let p = plan(&s(&["dev.a.sync.b", "dev.sync.dlq"]), &s(&["dev.*.sync.*"]), &[]);
        assert_eq!(p.covered, s(&["dev.a.sync.b"]));
        assert_eq!(p.add, s(&["dev.sync.dlq"]));
    }

    #[test]
    fn subjects_owned_by_other_streams_are_left_out() {
        let others = vec![("team-x".to_string(), s(&["dev.b.sync.>"]))];
        let p = plan(&s(&["dev.a.sync.b", "dev.b.sync.a"]), &[], &others);
        assert_eq!(p.add, s(&["dev.a.sync.b"]));
        assert_eq!(p.owned_elsewhere, vec![("dev.b.sync.a".to_string(), "team-x".to_string())]);
    }

    #[test]
    fn a_prefix_wildcard_elsewhere_does_not_own_the_bare_prefix() {
        let others = vec![("x".to_string(), s(&["dev.sync.dlq.>"]))];
        let p = plan(&s(&["dev.sync.dlq"]), &[], &others);
        assert_eq!(p.add, s(&["dev.sync.dlq"]));
    }
}
