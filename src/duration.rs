//! Durations from config ("30s", "500ms", "1m", 30, 1.5) parsed once into `Duration`.
//! Bare numbers are seconds: the unit the README's `ack_wait = 30` readers expect.

use std::time::Duration;

/// Parses a duration string; `option` names the setting in the error.
pub fn parse(text: &str, option: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| invalid(option, text))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "us" | "µs" => 0.000_001,
        "ns" => 0.000_000_001,
        "m" | "min" | "mins" => 60.0,
        "h" | "hr" | "hrs" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(invalid(option, text)),
    };
    from_seconds(value * seconds_per_unit, option, text)
}

/// Converts a number of seconds (Ruby Integer or Float) into a `Duration`.
pub fn from_seconds(seconds: f64, option: &str, shown: &str) -> Result<Duration, String> {
    // Below a millisecond is below what JetStream settings and the bridge's timers honour.
    if !seconds.is_finite() || seconds < 0.001 || seconds > 365.0 * 86_400.0 {
        return Err(format!(
            "{option} must be a duration between 1ms and 365 days, got {shown:?}"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn invalid(option: &str, text: &str) -> String {
    format!(
        "{option} must be a duration like \"30s\", \"500ms\", \"1m\" or a number of seconds, got {text:?}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("30s", "ack_wait").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("500ms", "x").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1m", "x").unwrap(), Duration::from_secs(60));
        assert_eq!(parse("2h", "x").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1.5s", "x").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("15", "x").unwrap(), Duration::from_secs(15));
        assert_eq!(parse(" 250 ms ", "x").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn rejects_nonsense_naming_the_option() {
        for bad in ["", "abc", "10 parsecs", "-5s", "0s", "1e400", "s", "1..2s", "100us", "0.2ms"] {
            let err = parse(bad, "ack_wait").unwrap_err();
            assert!(err.contains("ack_wait"), "{bad}: {err}");
        }
    }

    #[test]
    fn numbers_are_seconds() {
        assert_eq!(from_seconds(2.5, "x", "2.5").unwrap(), Duration::from_millis(2500));
        assert!(from_seconds(f64::NAN, "x", "NaN").is_err());
        assert!(from_seconds(0.0, "x", "0").is_err());
    }
}
