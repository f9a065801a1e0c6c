//! Keeps secrets out of every message that leaves the core.
//!
//! Connection options register their secrets (passwords, tokens, seeds, URL user info);
//! every error and event message is passed through `redact` before Ruby sees it.

use std::sync::atomic::{AtomicPtr, Ordering};

/// The registered secrets, longest first. Readers take no lock: a lock held by another
/// thread when the process forks would stay held forever in the child. A registration
/// (a handful per process, at connect) publishes a new list; old lists are leaked, as
/// a reader may still be using one.
static SECRETS: AtomicPtr<Vec<String>> = AtomicPtr::new(std::ptr::null_mut());

pub const MASK: &str = "[REDACTED]";

fn secrets() -> &'static [String] {
    list(SECRETS.load(Ordering::Acquire))
}

fn list(published: *mut Vec<String>) -> &'static [String] {
    // Safety: a published list is never freed.
    if published.is_null() { &[] } else { unsafe { &*published } }
}

/// Remembers a secret so it is masked in every later message.
pub fn register(secret: &str) {
    if secret.is_empty() {
        return;
    }
    loop {
        let current = SECRETS.load(Ordering::Acquire);
        let known = list(current);
        if known.iter().any(|s| s == secret) {
            return;
        }
        let mut next = known.to_vec();
        next.push(secret.to_string());
        // Longest first, so a secret that contains another is masked whole.
        next.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let next = Box::into_raw(Box::new(next));
        match SECRETS.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            // Another registration won: ours was never published, so it can be freed.
            Err(_) => drop(unsafe { Box::from_raw(next) }),
        }
    }
}

/// Secrets shorter than this are masked only where they stand alone (see redact).
const SHORT: usize = 3;

/// Masks registered secrets and the user info of any URL in `text`. A short secret (one
/// or two characters) is masked where it stands as a token of its own, not inside a word:
/// masking every "a" would mangle the message and tell where the secret's letters are.
pub fn redact(text: &str) -> String {
    let mut out = redact_url_userinfo(text);
    for secret in secrets() {
        if !out.contains(secret.as_str()) {
            continue;
        }
        out = if secret.len() >= SHORT { out.replace(secret.as_str(), MASK) } else { mask_standalone(&out, secret) };
    }
    out
}

/// Replaces the occurrences of `secret` not touching a letter or digit on either side.
fn mask_standalone(text: &str, secret: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (at, _) in text.match_indices(secret) {
        if at < last {
            continue; // overlaps a masked one
        }
        let before = text[..at].chars().next_back();
        let after = text[at + secret.len()..].chars().next();
        if !word(before) && !word(after) {
            out.push_str(&text[last..at]);
            out.push_str(MASK);
            last = at + secret.len();
        }
    }
    out.push_str(&text[last..]);
    out
}

/// Where the user info of one URL (a `nats_urls` entry, with or without a scheme) lies:
/// `(start, at)`, `url[start..at]` being the user info and `at` the URL's LAST `@`. A
/// password is not URL-encoded by everyone, so it may hold `@ : / ? #`: everything from
/// the scheme's `://` (or the start, without a scheme) up to the last `@` is user info.
/// An `@` in a path after the host makes more masked, never less. None without `@`.
pub fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let at = url.rfind('@')?;
    let start = scheme_end(url).filter(|&end| end <= at).unwrap_or(0);
    Some((start, at))
}

/// The index just past `scheme://` when `url` starts with a scheme (`nats`, `tls`, `ws`,
/// any RFC 3986 scheme); None otherwise (`user:pa://ss@host` has none: `user:pa` is not
/// a scheme).
fn scheme_end(url: &str) -> Option<usize> {
    let pos = url.find("://")?;
    is_scheme(&url[..pos]).then_some(pos + 3)
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(is_scheme_char)
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// One URL (a `nats_urls` entry, with or without a scheme) with its user info masked:
/// `deploy:K9x@tail@nats.internal:4222` -> `[REDACTED]@nats.internal:4222`.
pub fn redact_url(url: &str) -> String {
    match userinfo_span(url) {
        Some((start, at)) => format!("{}{MASK}{}", &url[..start], &url[at..]),
        None => url.to_string(),
    }
}

/// Masks the user info of every URL in free text (a log line, an error message). Words
/// are separated by whitespace and commas (a `nats_urls` list is split on commas too).
/// - A word with a scheme (`nats://`, also after a prefix such as `url=` or `(`) is masked
///   from the `://` to its last `@`.
/// - A word without one (`user:pass@host:4222`, as a mistaken setting is written) is
///   masked up to its last `@` when what follows is a host (a name, an IPv4 or a
///   bracketed IPv6 address) and the word has a password or a port: `user:pass@host`,
///   `token@host:4222`. An e-mail address (`bob@example.com`) is left alone.
pub fn redact_url_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = 0;
    for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
        if c.is_whitespace() || c == ',' {
            out.push_str(&redact_word(&text[word_start..i]));
            if i < text.len() {
                out.push(c);
            }
            word_start = i + c.len_utf8();
        }
    }
    out
}

fn redact_word(word: &str) -> std::borrow::Cow<'_, str> {
    let Some(at) = word.rfind('@') else { return word.into() };
    if word[..at].ends_with(MASK) {
        return word.into(); // masked already
    }
    let start = match scheme_in(word).filter(|&end| end <= at) {
        Some(end) => end,
        None => {
            let start = word.find(|c: char| !matches!(c, '(' | '[' | '{' | '<' | '"' | '\'' | '`')).unwrap_or(0);
            let (userinfo, host) = (&word[start.min(at)..at], &word[at + 1..]);
            let Some(port) = host_with_port(host) else { return word.into() };
            if userinfo.is_empty() || !(port || userinfo.contains(':')) {
                return word.into();
            }
            start.min(at)
        }
    };
    format!("{}{MASK}{}", &word[..start], &word[at..]).into()
}

/// The end of the first `scheme://` in a word whose scheme starts the word or follows a
/// character that cannot be part of user info written before it (`url=nats://`,
/// `(nats://`), so `user:pa://ss@host` is not taken for the scheme `pa`.
fn scheme_in(word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = word[from..].find("://") {
        let pos = from + found;
        let run = word[..pos].rfind(|c: char| !is_scheme_char(c)).map_or(0, |i| i + 1);
        let before = word[..run].chars().next_back();
        if is_scheme(&word[run..pos]) && before.is_none_or(|c| !c.is_alphanumeric() && !matches!(c, ':' | '@' | '/' | '%' | '?' | '#' | '&' | '!' | '*' | '$' | '~' | '_')) {
            return Some(pos + 3);
        }
        from = pos + 3;
    }
    None
}

/// Whether `s` starts with a host (`name`, `1.2.3.4`, `[::1]`), optionally a port, then
/// nothing but a path or closing punctuation: Some(has a port), else None.
fn host_with_port(s: &str) -> Option<bool> {
    let rest = if let Some(inner) = s.strip_prefix('[') {
        let close = inner.find(']')?;
        let addr = &inner[..close];
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.' | '%') || c.is_ascii_alphanumeric()) {
            return None;
        }
        &inner[close + 1..]
    } else {
        let end = s.find(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | '-' | '_'))).unwrap_or(s.len());
        if end == 0 || !s[..end].chars().next().is_some_and(char::is_alphanumeric) {
            return None;
        }
        &s[end..]
    };
    let digits = rest.strip_prefix(':').map(|r| r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len()));
    let (port, rest) = match digits {
        Some(n) if n > 0 => (true, &rest[1 + n..]),
        _ => (false, rest),
    };
    let tail_ok = rest.starts_with('/') || rest.chars().all(|c| matches!(c, ')' | ']' | '}' | '>' | '.' | ';' | ':' | '"' | '\'' | '`' | '!' | '?'));
    tail_ok.then_some(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_url_user_info() {
        assert_eq!(
            redact_url_userinfo("failed nats://bob:s3cret@127.0.0.1:4222, tls://tok@h:1"),
            "failed nats://[REDACTED]@127.0.0.1:4222, tls://[REDACTED]@h:1"
        );
        assert_eq!(redact_url_userinfo("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact_url_userinfo("nats://alice:p@ss:w/rd@127.0.0.1:4222/x failed"),
            "nats://[REDACTED]@127.0.0.1:4222/x failed"
        );
        assert_eq!(redact_url_userinfo("ws://h:1/path, nats://u:p@h:2"), "ws://h:1/path, nats://[REDACTED]@h:2");
    }

    /// Every form a nats_urls entry may take, as one entry (`redact_url`), as a comma list
    /// and inside a sentence (`redact`): no fragment of any password is left.
    #[test]
    fn masks_every_form_of_url_user_info() {
        let cases = [
            // (entry, what is shown, fragments of the secret)
            ("deploy:K9x@fQ2-long-secret-tail@nats.internal:4222", "[REDACTED]@nats.internal:4222", &["K9x", "fQ2-long-secret-tail"][..]),
            ("nats://deploy:K9x@fQ2-long-secret-tail@nats.internal:4222", "nats://[REDACTED]@nats.internal:4222", &["K9x", "fQ2-long"]),
            ("user:pa:ss/wo?rd#frag@127.0.0.1:4222", "[REDACTED]@127.0.0.1:4222", &["pa:ss", "wo?rd", "frag"]),
            ("tls://user:pa:ss/wo?rd#frag@127.0.0.1:4222", "tls://[REDACTED]@127.0.0.1:4222", &["pa:ss", "wo?rd", "frag"]),
            ("s3cr3t-token@nats.internal:4222", "[REDACTED]@nats.internal:4222", &["s3cr3t-token"]),
            ("nats://s3cr3t-token@nats.internal:4222", "nats://[REDACTED]@nats.internal:4222", &["s3cr3t-token"]),
            ("nats://user:v6-secret@[::1]:4222", "nats://[REDACTED]@[::1]:4222", &["v6-secret"]),
            ("user:v6-secret@[fe80::1%eth0]:4222", "[REDACTED]@[fe80::1%eth0]:4222", &["v6-secret"]),
            ("user:x://not-a-scheme@nats.internal", "[REDACTED]@nats.internal", &["not-a-scheme"]),
            ("wss://user:p@ss@host/path", "wss://[REDACTED]@host/path", &["p@ss"]),
        ];
        for (entry, shown, fragments) in cases {
            assert_eq!(redact_url(entry), shown, "redact_url({entry:?})");
            let list = format!("nats://127.0.0.1:4222,{entry}, nats://a-user:list-secret@[::1]:1");
            let sentence = format!("cannot reach {list} (last: {entry}); retrying \"{entry}\"");
            let masked = redact(&sentence);
            for secret in fragments.iter().chain(&["list-secret", "a-user"]) {
                assert!(!masked.contains(secret), "{secret} left in {masked}");
            }
            assert!(masked.contains(shown.trim_start_matches(|c| c != '[')), "{masked}");
            assert!(masked.starts_with("cannot reach nats://127.0.0.1:4222,"), "{masked}");
        }
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("[::1]:4222"), "[::1]:4222");
        assert_eq!(userinfo_span("u:p@h@x"), Some((0, 5)));
        assert_eq!(userinfo_span("nats://u:p@h@x"), Some((7, 12)));
    }

    #[test]
    fn leaves_words_that_are_not_urls_alone() {
        for text in ["mail bob@example.com about it", "subject dev.app.sync.other", "at 12:30 on [::1]:4222", "a@", "@host:1"] {
            assert_eq!(redact(text), text);
        }
        assert_eq!(redact("(user:pw@h:1)."), "([REDACTED]@h:1).");
        assert_eq!(redact("url=nats://user:pw@h:1"), "url=nats://[REDACTED]@h:1");
        assert_eq!(redact(&redact_url("u:p@h:1")), "[REDACTED]@h:1", "masked once");
    }

    #[test]
    fn masks_short_secrets_where_they_stand_alone() {
        register("q7");
        assert_eq!(redact("password q7 refused (q7)"), "password [REDACTED] refused ([REDACTED])");
        assert_eq!(redact("aq7b stays"), "aq7b stays");
    }

    #[test]
    fn masks_registered_secrets() {
        register("hunter2-token");
        assert_eq!(redact("auth hunter2-token rejected"), "auth [REDACTED] rejected");
    }
}
