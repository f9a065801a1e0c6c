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

/// `nats://user:pass@host` -> `nats://[REDACTED]@host`, wherever such a URL appears.
/// Everything up to the URL's last `@` is masked, `/` included: a password such as
/// `p@ss:w/rd` is not URL-encoded by everyone, and stopping at its `/` leaked the rest.
pub fn redact_url_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == ',' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let url = &tail[..end];
        match url.rfind('@') {
            Some(at) => {
                out.push_str(MASK);
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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
