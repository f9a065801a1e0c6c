//! The event envelope, serialized in the README's field order.

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

/// Builds the envelope JSON; returns (event_id, json). The payload is spliced in as
/// given: it comes from Ruby's JSON generator, so it is valid JSON already.
pub fn build(input: &EnvelopeInput) -> Result<(String, String), String> {
    if input.event_type.trim().is_empty() {
        return Err("event_type must not be blank".into());
    }
    let mut random = [0u8; 24];
    if input.event_id.is_none() || input.trace_id.is_none() {
        crate::random::fill(&mut random).map_err(|e| format!("cannot generate an event id: {e}"))?;
    }
    let event_id = match &input.event_id {
        Some(id) if !id.trim().is_empty() => id.clone(),
        Some(_) => return Err("event_id must not be blank".into()),
        None => {
            let bytes: [u8; 16] = random[..16].try_into().expect("16 bytes");
            uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
        }
    };
    // A trace id ties the event to what follows from it; one is made when none is given.
    let trace_id = match &input.trace_id {
        Some(t) => t.clone(),
        None => crate::random::hex(&random[16..]),
    };
    let occurred_at = match &input.occurred_at {
        Some(t) => t.clone(),
        None => now_iso8601(),
    };
    let payload = input.payload_json.trim();
    if payload.is_empty() {
        return Err("payload is not valid JSON: empty".into());
    }
    let mut json = String::with_capacity(payload.len() + 320);
    json.push_str("{\"event_id\":");
    push_str(&mut json, &event_id);
    json.push_str(",\"schema_version\":1,\"event_type\":");
    push_str(&mut json, &input.event_type);
    json.push_str(",\"producer\":");
    push_str(&mut json, &input.producer);
    json.push_str(",\"resource_type\":");
    push_opt(&mut json, input.resource_type.as_deref());
    json.push_str(",\"resource_id\":");
    push_opt(&mut json, input.resource_id.as_deref());
    json.push_str(",\"occurred_at\":");
    push_str(&mut json, &occurred_at);
    json.push_str(",\"trace_id\":");
    push_str(&mut json, &trace_id);
    json.push_str(",\"payload\":");
    json.push_str(payload);
    json.push('}');
    Ok((event_id, json))
}

fn push_str(out: &mut String, value: &str) {
    // serde_json's escaping of a &str cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
}

fn push_opt(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => push_str(out, v),
        None => out.push_str("null"),
    }
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
    fn rejects_blank_type_and_empty_payload() {
        let mut i = input();
        i.event_type = " ".into();
        assert!(build(&i).unwrap_err().contains("event_type"));
        let mut i = input();
        i.payload_json = " ".into();
        assert!(build(&i).unwrap_err().contains("payload"));
    }

    #[test]
    fn escapes_string_fields() {
        let mut i = input();
        i.event_type = "quote\"and\\slash\n".into();
        let (_, json) = build(&i).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["event_type"], "quote\"and\\slash\n");
    }
}
