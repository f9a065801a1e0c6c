//! Durable consumer provisioning, pull or push: create it, or bring an existing one to
//! the configured state.
//!
//! A push durable (`push` in the spec) delivers to its deliver subject, taken by a queue
//! subscription in its deliver group, so each message goes to one process of the group.
//! It gets no flow control and no idle heartbeats: the server sends those to one member
//! of the group only (NATS clients refuse them on queue subscriptions), so no member
//! could rely on them; the durable's max_ack_pending bounds what the group is sent.
//!
//! Backoff is applied by the bridge (NAK with the schedule's delay), not by the server:
//! a server-side `backoff` silently replaces `ack_wait` with `backoff[0]`, so a handler
//! slower than one second would be redelivered mid-work. The server keeps `ack_wait` as
//! configured; a `backoff` left by an older client is removed.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::{json, Value};

use crate::wire::api;
use crate::errors::Result;

/// Desired state of the durable.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: String,
    pub filter_subject: String,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    /// Where a push durable delivers; None: a pull durable.
    pub push: Option<PushDelivery>,
}

/// A push durable's deliver subject and deliver group (the queue group its processes share).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDelivery {
    pub subject: String,
    pub group: String,
}

/// What provisioning did, for the log.
#[derive(Debug)]
pub struct ConsumerReport {
    /// "created", "updated", "recreated" or "unchanged".
    pub action: &'static str,
    pub changes: Vec<String>,
}

fn desired_config(spec: &ConsumerSpec) -> Value {
    let mut config = json!({
        "durable_name": spec.durable,
        "deliver_policy": "all",
        "ack_policy": "explicit",
        // JetStream durations are nanoseconds on the wire.
        "ack_wait": spec.ack_wait.as_nanos() as u64,
        "max_deliver": spec.max_deliver,
        "filter_subject": spec.filter_subject,
        "replay_policy": "instant",
        "max_ack_pending": spec.max_ack_pending,
    });
    if let Some(push) = &spec.push {
        config["deliver_subject"] = json!(push.subject);
        config["deliver_group"] = json!(push.group);
    }
    config
}

/// Differences that an in-place update can fix, and whether a recreate is needed.
pub fn diff(current: &Value, spec: &ConsumerSpec) -> (Vec<String>, bool) {
    let mut changes = Vec::new();
    let mut recreate = false;
    let filter = current["filter_subject"].as_str().unwrap_or("");
    if filter != spec.filter_subject {
        changes.push(format!("filter_subject {filter:?} -> {:?}", spec.filter_subject));
        recreate = true;
    }
    if current["ack_policy"] != "explicit" {
        changes.push(format!("ack_policy {} -> \"explicit\"", current["ack_policy"]));
        recreate = true;
    }
    // The server cannot turn a pull durable into a push one or back: recreated. A push
    // durable's deliver subject and group change in place.
    let deliver_subject = current["deliver_subject"].as_str().filter(|s| !s.is_empty());
    match (deliver_subject, &spec.push) {
        (Some(_), None) => {
            changes.push("push consumer -> pull consumer".into());
            recreate = true;
        }
        (None, Some(push)) => {
            changes.push(format!("pull consumer -> push consumer (deliver_subject {:?})", push.subject));
            recreate = true;
        }
        (Some(subject), Some(push)) => {
            if subject != push.subject {
                changes.push(format!("deliver_subject {subject:?} -> {:?}", push.subject));
            }
            let group = current["deliver_group"].as_str().unwrap_or("");
            if group != push.group {
                changes.push(format!("deliver_group {group:?} -> {:?}", push.group));
            }
        }
        (None, None) => {}
    }
    let ack_wait = current["ack_wait"].as_u64().unwrap_or(0);
    if ack_wait != spec.ack_wait.as_nanos() as u64 {
        changes.push(format!("ack_wait {}ms -> {}ms", ack_wait / 1_000_000, spec.ack_wait.as_millis()));
    }
    if current["max_deliver"].as_i64().unwrap_or(-1) != spec.max_deliver {
        changes.push(format!("max_deliver {} -> {}", current["max_deliver"], spec.max_deliver));
    }
    if current["backoff"].as_array().is_some_and(|b| !b.is_empty()) {
        changes.push("server-side backoff removed (the bridge applies backoff with NAK delays)".into());
    }
    if current["max_ack_pending"].as_i64().unwrap_or(-1) != spec.max_ack_pending {
        changes.push(format!("max_ack_pending {} -> {}", current["max_ack_pending"], spec.max_ack_pending));
    }
    (changes, recreate)
}

/// Creates the durable, or updates/recreates it to match `spec`. A durable that has to be
/// created while `resume_at` is known (it was deleted under a running consumer) starts at
/// that stream sequence instead of replaying the stream.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    resume_at: Option<u64>,
) -> Result<ConsumerReport> {
    let info_subject = format!("CONSUMER.INFO.{}.{}", spec.stream, spec.durable);
    let current = match api::request(js, &info_subject, &json!({})).await {
        Ok(info) => Some(info),
        Err(e) if api::is_not_found(&e) => None,
        Err(e) => return Err(e),
    };
    let Some(info) = current else {
        let mut config = desired_config(spec);
        if let Some(seq) = resume_at {
            config["deliver_policy"] = json!("by_start_sequence");
            config["opt_start_seq"] = json!(seq);
        }
        create(js, spec, config).await?;
        let changes = resume_at.map(|s| vec![format!("was missing; resumed at stream sequence {s}")]).unwrap_or_default();
        return Ok(ConsumerReport { action: "created", changes });
    };
    let (changes, recreate) = diff(&info["config"], spec);
    if changes.is_empty() {
        return Ok(ConsumerReport { action: "unchanged", changes });
    }
    if recreate {
        // Keep the durable's position: start after the last message it acknowledged, so
        // recreating it neither skips unacked messages nor replays the stream's history.
        let floor = info["ack_floor"]["stream_seq"].as_u64().unwrap_or(0);
        api::request(js, &format!("CONSUMER.DELETE.{}.{}", spec.stream, spec.durable), &json!({})).await?;
        let mut config = desired_config(spec);
        if floor > 0 {
            config["deliver_policy"] = json!("by_start_sequence");
            config["opt_start_seq"] = json!(floor + 1);
        }
        create(js, spec, config).await?;
        return Ok(ConsumerReport { action: "recreated", changes });
    }
    let mut config = info["config"].clone();
    let desired = desired_config(spec);
    for key in ["ack_wait", "max_deliver", "max_ack_pending"] {
        config[key] = desired[key].clone();
    }
    if spec.push.is_some() {
        for key in ["deliver_subject", "deliver_group"] {
            config[key] = desired[key].clone();
        }
    }
    if let Some(obj) = config.as_object_mut() {
        obj.remove("backoff");
    }
    create(js, spec, config).await?;
    Ok(ConsumerReport { action: "updated", changes })
}

/// "consumer must be deliver all on workqueue stream".
const WORKQUEUE_DELIVER_ALL: u64 = 10101;

async fn create(js: &jetstream::Context, spec: &ConsumerSpec, mut config: Value) -> Result<Value> {
    // DURABLE.CREATE is understood by 2.9 and 2.15 alike, and updates in place.
    let subject = format!("CONSUMER.DURABLE.CREATE.{}.{}", spec.stream, spec.durable);
    match api::request(js, &subject, &json!({ "stream_name": spec.stream, "config": config })).await {
        // A workqueue stream (the pure-Ruby gem's, or the app layout's) keeps only messages
        // no consumer has acked, so starting at its first one neither replays nor skips.
        Err(e) if e.err_code == Some(WORKQUEUE_DELIVER_ALL) && config["deliver_policy"] != "all" => {
            config["deliver_policy"] = json!("all");
            if let Some(obj) = config.as_object_mut() {
                obj.remove("opt_start_seq");
            }
            api::request(js, &subject, &json!({ "stream_name": spec.stream, "config": config })).await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConsumerSpec {
        ConsumerSpec {
            stream: "s".into(),
            durable: "d".into(),
            filter_subject: "dev.b.sync.a".into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
            push: None,
        }
    }

    fn push_spec() -> ConsumerSpec {
        ConsumerSpec { push: Some(PushDelivery { subject: "dev.b.sync.a.d".into(), group: "d".into() }), ..spec() }
    }

    #[test]
    fn desired_config_uses_nanoseconds() {
        assert_eq!(desired_config(&spec())["ack_wait"], 30_000_000_000u64);
    }

    #[test]
    fn matching_consumer_has_no_changes() {
        let (changes, recreate) = diff(&desired_config(&spec()), &spec());
        assert!(changes.is_empty() && !recreate);
    }

    #[test]
    fn settings_change_in_place_and_filter_change_recreates() {
        let mut current = desired_config(&spec());
        current["ack_wait"] = json!(1_000_000_000u64);
        current["backoff"] = json!([1_000_000_000u64]);
        let (changes, recreate) = diff(&current, &spec());
        assert_eq!(changes.len(), 2);
        assert!(!recreate);
        current["filter_subject"] = json!("dev.x.sync.a");
        assert!(diff(&current, &spec()).1);
    }

    #[test]
    fn a_push_durable_delivers_to_its_subject_and_group() {
        let config = desired_config(&push_spec());
        assert_eq!(config["deliver_subject"], "dev.b.sync.a.d");
        assert_eq!(config["deliver_group"], "d");
        assert!(config.get("flow_control").is_none() && config.get("idle_heartbeat").is_none());
        assert!(desired_config(&spec()).get("deliver_subject").is_none());
        assert!(diff(&config, &push_spec()).0.is_empty());
    }

    #[test]
    fn switching_between_pull_and_push_recreates_and_a_new_deliver_subject_or_group_updates() {
        assert!(diff(&desired_config(&spec()), &push_spec()).1);
        assert!(diff(&desired_config(&push_spec()), &spec()).1);
        let mut current = desired_config(&push_spec());
        current["deliver_subject"] = json!("dev.b.sync.a.old");
        current["deliver_group"] = json!("old");
        let (changes, recreate) = diff(&current, &push_spec());
        assert_eq!(changes, vec!["deliver_subject \"dev.b.sync.a.old\" -> \"dev.b.sync.a.d\"", "deliver_group \"old\" -> \"d\""]);
        assert!(!recreate);
    }
}
