//! The stream limits the bridge manages (max_age, max_bytes, max_msgs): how a stream
//! differs from them, and what applying them would delete.
//!
//! Lowering a limit makes the server delete at once the oldest messages past it: every
//! app's unconsumed events and the dead letters alike, on a stream the apps of an env
//! share. So an app process never changes an existing stream's limits (LimitsPolicy::Keep);
//! the operator's provision task applies them, after saying what they would delete.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use serde_json::{json, Value};

use crate::errors::Result;
use crate::wire::api;

/// What provisioning may do to an EXISTING stream's limits (a new stream gets them all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsPolicy {
    /// Leave them alone and report how they differ: every app process (boot, publish, consume).
    Keep,
    /// Apply them (rake jetstream_bridge:provision). A change that would delete stored
    /// messages is refused unless `delete` (the operator confirmed it).
    Apply { delete: bool },
}

/// The retention limits the bridge manages (the oldest messages are discarded past
/// them). None means no opinion: an existing stream's value is not compared, and a new
/// stream has no limit there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<i64>,
    pub max_msgs: Option<i64>,
}

/// A managed limit whose value on the stream differs from the configured one. Wire
/// values: max_age in nanoseconds; JetStream's "no limit" is 0 for max_age, -1 for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub stream: i64,
    pub configured: i64,
}

impl Difference {
    /// As a change to make: "max_msgs no limit -> 10".
    pub fn change(&self) -> String {
        format!("{} {} -> {}", self.field, show_limit(self.field, self.stream), show_limit(self.field, self.configured))
    }

    /// As a difference left alone: "max_msgs: stream no limit, configured 10".
    pub fn drift(&self) -> String {
        format!("{}: stream {}, configured {}", self.field, show_limit(self.field, self.stream), show_limit(self.field, self.configured))
    }

    /// The configured limit, None when it is "no limit".
    fn limit(&self) -> Option<u64> {
        u64::try_from(self.configured).ok().filter(|v| *v > 0)
    }
}

impl Limits {
    /// The managed limits as stream config fields and wire values.
    fn wanted(&self) -> Vec<(&'static str, i64)> {
        let mut wanted = Vec::new();
        if let Some(age) = self.max_age {
            wanted.push(("max_age", age.as_nanos().min(i64::MAX as u128) as i64));
        }
        if let Some(bytes) = self.max_bytes {
            wanted.push(("max_bytes", bytes));
        }
        if let Some(msgs) = self.max_msgs {
            wanted.push(("max_msgs", msgs));
        }
        wanted
    }

    /// How the stream `config` differs from the managed limits.
    pub fn differences(&self, config: &Value) -> Vec<Difference> {
        self.wanted()
            .into_iter()
            .filter_map(|(field, configured)| {
                let stream = config[field].as_i64().unwrap_or(if field == "max_age" { 0 } else { -1 });
                (stream != configured).then_some(Difference { field, stream, configured })
            })
            .collect()
    }

    pub fn apply(&self, config: &mut Value) {
        for (field, value) in self.wanted() {
            config[field] = json!(value);
        }
    }
}

/// A limit as an operator reads it: "no limit", seconds for max_age, else the number.
fn show_limit(field: &str, value: i64) -> String {
    match (field, value) {
        ("max_age", 0) => "no limit".into(),
        ("max_age", nanos) => format!("{}s", nanos / 1_000_000_000),
        (_, value) if value < 0 => "no limit".into(),
        (_, value) => value.to_string(),
    }
}

/// What applying the differences would delete from the stream now. Every limit deletes
/// from the oldest end, so together they delete what the hungriest one does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loss {
    /// Messages deleted (an estimate, see `loss`), of `stored`.
    pub messages: u64,
    pub bytes: u64,
    pub stored: u64,
    /// One line per limit that deletes something ("max_msgs 1000 -> 10: 990 messages over the new limit").
    pub lines: Vec<String>,
}

/// Estimates the Loss of applying `differences` to the stream (its STREAM.INFO `info`):
/// - max_msgs: the messages over the new limit (exact);
/// - max_bytes: the bytes over it (exact), and that many bytes of messages at the
///   stream's average message size;
/// - max_age: the messages stored before now minus max_age (this host's clock), found
///   by a binary search on stored times (STREAM.MSG.GET, about log2(messages) requests;
///   none when the oldest message is young enough);
/// - bytes of messages counted by number: that many at the average message size.
pub async fn loss(js: &jetstream::Context, stream: &str, info: &Value, differences: &[Difference]) -> Result<Loss> {
    let state = &info["state"];
    let older = match differences.iter().find(|d| d.field == "max_age").and_then(Difference::limit) {
        Some(nanos) => Some(count_older_than(js, stream, state, Duration::from_nanos(nanos)).await?),
        None => None,
    };
    Ok(estimate(state, differences, older))
}

/// Loss from the stream's `state`, given how many messages are older than the new max_age.
fn estimate(state: &Value, differences: &[Difference], older_than_age: Option<u64>) -> Loss {
    let stored = state["messages"].as_u64().unwrap_or(0);
    let bytes = state["bytes"].as_u64().unwrap_or(0);
    let average = if stored == 0 { 0.0 } else { bytes as f64 / stored as f64 };
    let bytes_of = |n: u64| ((n as f64 * average).round() as u64).min(bytes);
    let mut loss = Loss { stored, ..Loss::default() };
    for d in differences {
        let Some(limit) = d.limit() else { continue };
        let (messages, gone_bytes, line) = match d.field {
            "max_msgs" => {
                let n = stored.saturating_sub(limit);
                (n, bytes_of(n), format!("{}: {n} messages over the new limit", d.change()))
            }
            "max_bytes" => {
                let over = bytes.saturating_sub(limit);
                let n = if over == 0 { 0 } else { ((over as f64 / average).ceil() as u64).min(stored) };
                (n, over, format!("{}: {over} bytes over, about {n} messages", d.change()))
            }
            _ => {
                let n = older_than_age.unwrap_or(0).min(stored);
                (n, bytes_of(n), format!("{}: {n} messages older than that", d.change()))
            }
        };
        if messages > 0 {
            loss.lines.push(line);
        }
        loss.messages = loss.messages.max(messages);
        loss.bytes = loss.bytes.max(gone_bytes);
    }
    loss
}

/// Messages of the stream stored more than `age` ago: the first sequence whose message
/// is younger, less the first sequence (messages deleted in between count too).
async fn count_older_than(js: &jetstream::Context, stream: &str, state: &Value, age: Duration) -> Result<u64> {
    let (first, last) = (state["first_seq"].as_u64().unwrap_or(0), state["last_seq"].as_u64().unwrap_or(0));
    let cutoff = TimeDelta::from_std(age).ok().and_then(|age| Utc::now().checked_sub_signed(age));
    let (Some(cutoff), false) = (cutoff, state["messages"].as_u64().unwrap_or(0) == 0) else { return Ok(0) };
    if time_of(&state["first_ts"]).is_none_or(|t| t >= cutoff) {
        return Ok(0);
    }
    // The smallest sequence whose next stored message is young enough (or none is left).
    let (mut lo, mut hi) = (first, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match stored_at_or_after(js, stream, mid).await? {
            Some((seq, time)) if time < cutoff => lo = seq + 1,
            _ => hi = mid,
        }
    }
    Ok(lo - first)
}

/// Sequence and stored time of the stream's first message at or after `seq`.
async fn stored_at_or_after(js: &jetstream::Context, stream: &str, seq: u64) -> Result<Option<(u64, DateTime<FixedOffset>)>> {
    let request = json!({ "seq": seq, "next_by_subj": ">" });
    match api::request(js, &format!("STREAM.MSG.GET.{stream}"), &request).await {
        Ok(reply) => Ok(reply["message"]["seq"].as_u64().zip(time_of(&reply["message"]["time"]))),
        Err(e) if api::is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

fn time_of(value: &Value) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(value.as_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(field: &'static str, stream: i64, configured: i64) -> Difference {
        Difference { field, stream, configured }
    }

    #[test]
    fn only_managed_limits_differ() {
        let config = json!({ "max_age": 0, "max_bytes": 1_000, "max_msgs": -1 });
        assert!(Limits::default().differences(&config).is_empty(), "nothing managed, nothing differs");
        let limits = Limits { max_age: Some(Duration::from_secs(604_800)), max_bytes: Some(1_000), max_msgs: None };
        let differences = limits.differences(&config);
        assert_eq!(differences, vec![diff("max_age", 0, 604_800_000_000_000)]);
        assert_eq!(differences[0].change(), "max_age no limit -> 604800s");
        assert_eq!(differences[0].drift(), "max_age: stream no limit, configured 604800s");
        let mut updated = config.clone();
        limits.apply(&mut updated);
        assert!(limits.differences(&updated).is_empty());
        assert_eq!(updated["max_msgs"], -1, "an unmanaged limit is left alone");
    }

    #[test]
    fn the_loss_is_what_the_hungriest_limit_deletes() {
        let state = json!({ "messages": 1_000, "bytes": 100_000 });
        let loss = estimate(&state, &[diff("max_msgs", -1, 10), diff("max_bytes", -1, 50_000)], None);
        assert_eq!(loss.messages, 990);
        assert_eq!(loss.bytes, 99_000);
        assert_eq!(loss.stored, 1_000);
        assert_eq!(
            loss.lines,
            vec!["max_msgs no limit -> 10: 990 messages over the new limit", "max_bytes no limit -> 50000: 50000 bytes over, about 500 messages"]
        );
        let by_age = estimate(&state, &[diff("max_age", 0, 60_000_000_000)], Some(700));
        assert_eq!((by_age.messages, by_age.bytes), (700, 70_000));
    }

    #[test]
    fn raising_a_limit_deletes_nothing() {
        let state = json!({ "messages": 100, "bytes": 10_000 });
        let loss = estimate(&state, &[diff("max_msgs", 10, 1_000), diff("max_bytes", 1, 20_000), diff("max_age", 1, 2)], Some(0));
        assert_eq!(loss, Loss { stored: 100, ..Loss::default() });
        assert_eq!(estimate(&json!({ "messages": 0, "bytes": 0 }), &[diff("max_bytes", -1, 1)], None).messages, 0);
    }
}
