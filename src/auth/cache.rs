//! Remembers recent successful password checks so argon2 runs once per credential, not once per
//! request. Entries are keyed by a keyed hash of user, password and stored hash — never the
//! password itself — so a changed password or a removed user no longer matches at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const MAX_ENTRIES: usize = 10_000;

pub struct CredentialCache {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl CredentialCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            key: rand::random(),
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry_key(&self, user: &str, password: &str, stored_hash: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in [user, password, stored_hash] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    pub fn contains(&self, user: &str, password: &str, stored_hash: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let key = self.entry_key(user, password, stored_hash);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&key) {
            Some(expires) if *expires > Instant::now() => true,
            Some(_) => {
                entries.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Records a successful check. Failures are never recorded.
    pub fn remember(&self, user: &str, password: &str, stored_hash: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let key = self.entry_key(user, password, stored_hash);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, expires| *expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, now + self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_credential_matches_only_with_the_same_stored_hash() {
        let cache = CredentialCache::new(Duration::from_secs(60));
        cache.remember("alice", "pw", "$argon2id$one");
        assert!(cache.contains("alice", "pw", "$argon2id$one"));
        assert!(!cache.contains("alice", "pw", "$argon2id$two"));
        assert!(!cache.contains("alice", "other", "$argon2id$one"));
        assert!(!cache.contains("bob", "pw", "$argon2id$one"));
    }

    #[test]
    fn entries_expire() {
        let cache = CredentialCache::new(Duration::from_millis(1));
        cache.remember("alice", "pw", "h");
        std::thread::sleep(Duration::from_millis(5));
        assert!(!cache.contains("alice", "pw", "h"));
    }

    #[test]
    fn a_zero_ttl_disables_the_cache() {
        let cache = CredentialCache::new(Duration::ZERO);
        cache.remember("alice", "pw", "h");
        assert!(!cache.contains("alice", "pw", "h"));
    }
}
