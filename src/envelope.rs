//! The event envelope, serialized in the README's field order.

use serde::Serialize;
use serde_json::value::RawValue;

/// Envelope fields as given by the caller; absent ones are filled in by `build`.
#[derive(Debug, Default)]
pub struct EnvelopeInput {
    pub event_id: Option<String>,
    pub event_type: String,
    pub producer: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub occurred_at: Option<String>,
    pub trace_id: Option<String>,
    /// The payload, already JSON-encoded (by Ruby's JSON, which knows Ruby types).
    pub payload_json: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    event_id: &'a str,
    schema_version: u32,
    event_type: &'a str,
    producer: &'a str,
    resource_type: Option<&'a str>,
    resource_id: Option<&'a str>,
    occurred_at: &'a str,
    trace_id: &'a str,
    payload: &'a RawValue,
}

/// Builds the envelope JSON; returns (event_id, json).
pub fn build(input: &EnvelopeInput) -> Result<(String, String), String> {
    if input.event_type.trim().is_empty() {
        return Err("event_type must not be blank".into());
    }
    let event_id = match &input.event_id {
        Some(id) if !id.trim().is_empty() => id.clone(),
        Some(_) => return Err("event_id must not be blank".into()),
        None => uuid::Uuid::new_v4().to_string(),
    };
    // A trace id ties the event to what follows from it; one is made when none is given.
    let trace_id = match &input.trace_id {
        Some(t) => t.clone(),
        None => uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
    };
    let occurred_at = match &input.occurred_at {
        Some(t) => t.clone(),
        None => now_iso8601(),
    };
    let payload: &RawValue = serde_json::from_str(&input.payload_json)
        .map_err(|e| format!("payload is not valid JSON: {e}"))?;
    let json = serde_json::to_string(&Envelope {
        event_id: &event_id,
        schema_version: 1,
        event_type: &input.event_type,
        producer: &input.producer,
        resource_type: input.resource_type.as_deref(),
        resource_id: input.resource_id.as_deref(),
        occurred_at: &occurred_at,
        trace_id: &trace_id,
        payload,
    })
    .map_err(|e| format!("envelope could not be encoded: {e}"))?;
    Ok((event_id, json))
}

/// Current time as ISO-8601 UTC with millisecond precision, e.g. 2025-08-13T21:00:00.123Z.
pub fn now_iso8601() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn input() -> EnvelopeInput {
        EnvelopeInput {
            event_type: "created".into(),
            producer: "app".into(),
            resource_type: Some("user".into()),
            resource_id: Some("42".into()),
            payload_json: r#"{"id":42,"email":"a@b.c"}"#.into(),
            ..Default::default()
        }
    }

    #[test]
    fn fills_id_and_time_in_documented_order() {
        let (id, json) = build(&input()).unwrap();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        let keys: Vec<&str> = json
            .trim_matches(|c| c == '{' || c == '}')
            .split(",\"")
            .map(|kv| kv.trim_start_matches('"').split('"').next().unwrap())
            .take(9)
            .collect();
        assert_eq!(
            keys,
            ["event_id", "schema_version", "event_type", "producer", "resource_type",
             "resource_id", "occurred_at", "trace_id", "payload"]
        );
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["payload"]["email"], "a@b.c");
        assert!(v["occurred_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 16);
    }

    #[test]
    fn keeps_given_fields() {
        let mut i = input();
        i.event_id = Some("custom-event-id".into());
        i.occurred_at = Some("2025-08-13T21:00:00Z".into());
        i.trace_id = Some("abc".into());
        let (id, json) = build(&i).unwrap();
        assert_eq!(id, "custom-event-id");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["occurred_at"], "2025-08-13T21:00:00Z");
        assert_eq!(v["trace_id"], "abc");
    }

    #[test]
    fn rejects_blank_type_and_bad_payload() {
        let mut i = input();
        i.event_type = " ".into();
        assert!(build(&i).unwrap_err().contains("event_type"));
        let mut i = input();
        i.payload_json = "{nope".into();
        assert!(build(&i).unwrap_err().contains("payload"));
    }
}
