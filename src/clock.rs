//! The wall clock as the bridge writes it: ISO-8601 UTC with milliseconds.

/// The current time as ISO-8601 UTC with millisecond precision (see push_now_iso8601).
pub fn now_iso8601() -> String {
    let mut text = String::with_capacity(24);
    push_now_iso8601(&mut text);
    text
}

/// Appends the current time as ISO-8601 UTC with millisecond precision, e.g.
/// 2025-08-13T21:00:00.123Z. The text up to the second is formatted once per second
/// (per thread); only the milliseconds are written each time.
pub fn push_now_iso8601(out: &mut String) {
    thread_local! {
        static SECOND: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    let millis = now.timestamp_subsec_millis().min(999); // a leap second reads as 1000+
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != now.timestamp() {
            *second = (now.timestamp(), now.format("%Y-%m-%dT%H:%M:%S").to_string());
        }
        out.push_str(&second.1);
    });
    let digits = [b'.', b'0' + (millis / 100) as u8, b'0' + (millis / 10 % 10) as u8, b'0' + (millis % 10) as u8, b'Z'];
    out.push_str(std::str::from_utf8(&digits).expect("ASCII"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_time_as_chrono_does() {
        let before = chrono::Utc::now();
        let mut ours = String::new();
        push_now_iso8601(&mut ours);
        let after = chrono::Utc::now();
        let parsed = chrono::DateTime::parse_from_rfc3339(&ours).unwrap();
        assert_eq!(ours, parsed.to_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        assert!(parsed >= before - chrono::Duration::milliseconds(1) && parsed <= after);
    }
}
