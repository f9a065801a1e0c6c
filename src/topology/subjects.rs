//! NATS subject rules: token validation, wildcard matching, coverage and overlap.
//! `*` matches exactly one token; `>` matches one or more trailing tokens, never zero
//! (so `a.>` does not match `a`, the original gem's mistake).

/// Checks a config value used as one subject token (env, app_name, destination_app).
pub fn validate_token(option: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{option} must not be empty"));
    }
    if let Some(bad) = value
        .chars()
        // `/` and `\` are allowed in subjects but not in the stream and durable names
        // made from these tokens: the server would refuse those at first use.
        .find(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{option} is used in NATS subjects and stream/consumer names and must not contain {bad:?}, got {value:?}"
        ));
    }
    Ok(())
}

/// Checks a full subject given for publishing (no wildcards, no empty tokens).
pub fn validate_publish_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty()
        || subject.split('.').any(|t| {
            t.is_empty() || t == "*" || t == ">" || t.chars().any(|c| c.is_whitespace() || c.is_control())
        })
    {
        return Err(format!(
            "subject {subject:?} is not a valid subject to publish to (empty token, wildcard or whitespace)"
        ));
    }
    if is_system_subject(subject) {
        return Err(format!(
            "subject {subject:?} is a NATS system subject ($-prefixed or _INBOX.): publishing there would be a request to the server (a JetStream publish to $JS.API.* runs that API call), never an event"
        ));
    }
    Ok(())
}

/// Subjects the server and clients reserve: `$JS.API...`, `$SYS...`, `$KV...` (every
/// `$`-prefixed one) and reply inboxes.
pub fn is_system_subject(subject: &str) -> bool {
    subject.starts_with('$') || subject == "_INBOX" || subject.starts_with("_INBOX.")
}

/// True when the literal `subject` is matched by `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    covers(pattern, subject)
}

/// True when every subject matched by `inner` is also matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let outer: Vec<&str> = outer.split('.').collect();
    let inner: Vec<&str> = inner.split('.').collect();
    for (i, o) in outer.iter().enumerate() {
        if *o == ">" {
            return inner.len() > i;
        }
        let Some(t) = inner.get(i) else { return false };
        match (*o, *t) {
            (_, ">") => return false,
            ("*", _) => {}
            (o, t) if o == t && t != "*" => {}
            _ => return false,
        }
    }
    outer.len() == inner.len()
}

/// True when some subject is matched by both patterns.
pub fn overlap(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) => {
                if !(*x == "*" || *y == "*" || x == y) {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_wildcard_needs_at_least_one_token() {
        assert!(!matches("a.>", "a"));
        assert!(matches("a.>", "a.b"));
        assert!(matches("a.>", "a.b.c"));
        assert!(matches(">", "a"));
    }

    #[test]
    fn single_wildcard_is_one_token() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.bc"));
    }

    #[test]
    fn coverage_between_patterns() {
        assert!(covers("dev.>", "dev.app.sync.other"));
        assert!(covers("dev.*.sync.*", "dev.app.sync.other"));
        assert!(covers("dev.>", "dev.*.sync.>"));
        assert!(!covers("dev.*.sync.*", "dev.>"));
        assert!(!covers("dev.app.sync.other", "dev.*.sync.other"));
        assert!(!covers("dev.*", "dev.>"));
        assert!(covers("dev.*", "dev.*"));
    }

    #[test]
    fn overlap_between_patterns() {
        assert!(overlap("dev.a.sync.b", "dev.a.sync.b"));
        assert!(overlap("dev.*.sync.b", "dev.a.sync.*"));
        assert!(overlap("dev.>", "dev.a.sync.b"));
        assert!(overlap("dev.a.sync.b", "dev.a.>"));
        assert!(!overlap("dev.a.>", "dev.a"));
        assert!(!overlap("dev.a.sync.b", "dev.b.sync.a"));
        assert!(!overlap("dev.*", "dev.a.b"));
        assert!(!overlap("prod.>", "dev.a.sync.b"));
    }

    #[test]
    fn tokens_reject_subject_syntax() {
        for bad in ["a.b", "a*", ">", "with space", "tab\t", "nl\n", "", "billing/eu", "a\\b"] {
            assert!(validate_token("env", bad).is_err(), "{bad:?}");
        }
        assert!(validate_token("env", "production-1_x").is_ok());
        let err = validate_token("app_name", "my.app").unwrap_err();
        assert!(err.contains("app_name") && err.contains("my.app"));
    }

    #[test]
    fn system_subjects_are_refused() {
        for system in ["$JS.API.STREAM.PURGE.x", "$SYS.REQ.SERVER.PING", "$KV.b.k", "_INBOX.abc", "$x"] {
            assert!(validate_publish_subject(system).unwrap_err().contains("system subject"), "{system}");
        }
        assert!(validate_publish_subject("orders.$JS").is_ok());
        assert!(validate_publish_subject("_INBOXES.x").is_ok());
    }

    #[test]
    fn publish_subjects_are_literal() {
        assert!(validate_publish_subject("a.b.c").is_ok());
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(validate_publish_subject(bad).is_err(), "{bad:?}");
        }
    }
}
