//! Idempotency keys that the service derives from another system's ids (a CloudEvent's source
//! and id, a broker message's id): scoped, so that two systems' ids never meet, unambiguous, and
//! always a valid key, however long or odd the id.

use super::Digest;

/// Longer keys are replaced by their digest.
const LONGEST_READABLE: usize = 128;

/// `<kind>:<length of scope>:<scope>:<id>` (the length makes the split unambiguous), or, when
/// that is longer than 128 bytes or holds a control character, `<kind>:sha256:<hex digest>`
/// of it.
pub fn scoped_key(kind: &str, scope: &str, id: &str) -> String {
    let key = format!("{kind}:{}:{scope}:{id}", scope.len());
    if key.len() <= LONGEST_READABLE && !key.chars().any(char::is_control) {
        key
    } else {
        format!(
            "{kind}:sha256:{}",
            Digest::sha256(&[key.as_bytes()]).to_hex()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_scoped_unambiguous_and_bounded() {
        assert_eq!(scoped_key("ce", "/billing", "inv-1"), "ce:8:/billing:inv-1");
        assert_ne!(
            scoped_key("ce", "/s a", "b c"),
            scoped_key("ce", "/s", "a b c")
        );
        assert_ne!(scoped_key("nats", "A", "m1"), scoped_key("amqp", "A", "m1"));
        let long = scoped_key("nats", "AUDIT", &"x".repeat(1500));
        assert!(
            long.starts_with("nats:sha256:") && long.len() < 80,
            "{long}"
        );
        assert!(scoped_key("nats", "AUDIT", "a\tb").starts_with("nats:sha256:"));
    }
}
