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
}

/// Builds the envelope JSON; returns (event_id, json). `payload_json` is spliced in as
/// given: it comes from Ruby's JSON generator, so it is valid JSON already.
pub fn build(input: &EnvelopeInput, payload_json: &str) -> Result<(String, String), String> {
    let payload = payload_json.trim();
    if payload.is_empty() {
        return Err("payload is not valid JSON: empty".into());
    }
    // Ruby wrote this JSON, and a custom to_json may have written anything: a body that is
    // not JSON would be stored and acked, then dead-lettered by every consumer. Checked
    // without reading numbers into f64, so an integer of any size passes, as it should.
    serde_json::from_str::<serde::de::IgnoredAny>(payload)
        .map_err(|e| format!("payload cannot be encoded as JSON: its to_json wrote invalid JSON ({e}): {}", excerpt(payload)))?;
    let (event_id, mut json) = head(input, payload.len())?;
    json.push_str(payload);
    json.push('}');
    Ok((event_id, json))
}

/// The first characters of `text`, for an error message.
fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(80).collect();
    if cut.len() < text.len() { format!("{cut}...") } else { cut }
}

/// Writes the envelope up to `"payload":`; returns (event_id, json). The caller appends
/// the payload's JSON (`payload_capacity` bytes are reserved for it) and `}`.
pub fn head(input: &EnvelopeInput, payload_capacity: usize) -> Result<(String, String), String> {
    if input.event_type.trim().is_empty() {
        return Err("event_type must not be blank".into());
    }
    let mut random = [0u8; 24];
    if input.event_id.is_none() || input.trace_id.is_none() {
        crate::runtime::random::fill(&mut random).map_err(|e| format!("cannot generate an event id: {e}"))?;
    }
    let event_id = match &input.event_id {
        Some(id) if !id.trim().is_empty() => id.clone(),
        Some(_) => return Err("event_id must not be blank".into()),
        None => {
            let bytes: [u8; 16] = random[..16].try_into().expect("16 bytes");
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().encode_lower(&mut text).to_string()
        }
    };
    let mut json = crate::publish::body_buffer::take(payload_capacity + 320);
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
    match &input.occurred_at {
        Some(t) => push_str(&mut json, t),
        None => {
            json.push('"');
            crate::clock::push_now_iso8601(&mut json);
            json.push('"');
        }
    }
    json.push_str(",\"trace_id\":");
    match &input.trace_id {
        Some(t) => push_str(&mut json, t),
        // A trace id ties the event to what follows from it; one is made when none is given.
        None => {
            json.push('"');
            crate::runtime::random::push_hex(&mut json, &random[16..]);
            json.push('"');
        }
    }
    json.push_str(",\"payload\":");
    Ok((event_id, json))
}

/// A JSON string, escaped as serde_json and the json gem both do.
fn push_str(out: &mut String, value: &str) {
    crate::publish::json_string::escape_into(out, value, crate::publish::json_string::Style::JsonGem);
}

fn push_opt(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => push_str(out, v),
        None => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const PAYLOAD: &str = r#"{"id":42,"email":"a@b.c"}"#;

    fn input() -> EnvelopeInput {
        EnvelopeInput {
            event_type: "created".into(),
            producer: "app".into(),
            resource_type: Some("user".into()),
            resource_id: Some("42".into()),
            ..Default::default()
        }
    }

    #[test]
    fn fills_id_and_time_in_documented_order() {
        let (id, json) = build(&input(), PAYLOAD).unwrap();
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
        let (id, json) = build(&i, PAYLOAD).unwrap();
        assert_eq!(id, "custom-event-id");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["occurred_at"], "2025-08-13T21:00:00Z");
        assert_eq!(v["trace_id"], "abc");
    }

    #[test]
    fn rejects_blank_type_and_empty_payload() {
        let mut i = input();
        i.event_type = " ".into();
        assert!(build(&i, PAYLOAD).unwrap_err().contains("event_type"));
        assert!(build(&input(), " ").unwrap_err().contains("payload"));
    }

    #[test]
    fn rejects_a_payload_that_is_not_json_and_takes_numbers_of_any_size() {
        assert!(build(&input(), r#"{"total":12.50 EUR}"#).unwrap_err().contains("to_json wrote invalid JSON"));
        assert!(build(&input(), r#"{"a":1}{"b":2}"#).is_err());
        let huge = format!(r#"{{"n":1{},"f":1e400}}"#, "0".repeat(400));
        assert!(build(&input(), &huge).is_ok());
    }

    #[test]
    fn escapes_string_fields() {
        let mut i = input();
        i.event_type = "quote\"and\\slash\n".into();
        let (_, json) = build(&i, PAYLOAD).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["event_type"], "quote\"and\\slash\n");
    }
}
