//! The web viewer's sign-in sessions: a random secret kept in the browser's cookie, only its
//! SHA-256 in the store (so instances sharing a database share sessions, and a copy of the
//! database opens none), an idle and an absolute expiry, and the user's row read again on every
//! use, so a removed user or a changed password ends the session at its next request.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use super::{AuthError, Authenticator, Credential};
use crate::model::Digest;
use crate::model::session::SessionRecord;
use crate::store::Store;

/// How long sessions last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A session unused for this long has ended.
    pub idle: Duration,
    /// A session this old has ended, however much it is used.
    pub lifetime: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(8 * 3600),
            lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// How often a session's `last_seen_at` is written: the idle expiry is no finer than this, and
/// a page's many reads do not each cost a write.
const TOUCH_EVERY: time::Duration = time::Duration::minutes(1);

/// Characters of a session secret: 32 random bytes in unpadded base64url.
const SECRET_CHARS: usize = 43;

/// How a session is stored and looked up.
pub fn secret_hash(secret: &str) -> Digest {
    Digest::sha256(&[b"auditor ui session\n", secret.as_bytes()])
}

/// The anti-CSRF token of the session whose secret is `secret`: derived from it, so nothing
/// more is stored, and one-way, so the token (which the page holds in script) does not give the
/// cookie (which script cannot read) away. 64 lowercase hex digits.
pub fn csrf_token(secret: &str) -> String {
    Digest::sha256(&[b"auditor ui csrf\n", secret.as_bytes()]).to_hex()
}

/// Whether `text` has a session secret's shape; anything else is not looked up.
pub fn has_secret_shape(text: &str) -> bool {
    text.len() == SECRET_CHARS
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What identifies the user's credentials as they were at sign-in: a changed password (or a
/// user removed and added again) no longer matches.
fn credential_tag(password_hash: &str) -> Digest {
    Digest::sha256(&[b"auditor ui credential\n", password_hash.as_bytes()])
}

fn to_time(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}

impl<S: Store> Authenticator<S> {
    /// Opens a session for `user`, whose password the caller has just checked; returns its
    /// secret, which is never stored and belongs in the cookie alone. Expired sessions of
    /// everyone are deleted on the way, so the table does not grow.
    pub async fn begin_session(
        &self,
        user: &str,
        policy: SessionPolicy,
    ) -> Result<String, AuthError> {
        let record = self
            .user(user)
            .await?
            .ok_or(AuthError::InvalidCredentials)?;
        let now = OffsetDateTime::now_utc();
        self.store()
            .remove_expired_sessions(now - to_time(policy.idle), now - to_time(policy.lifetime))
            .await?;
        let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        self.store()
            .add_session(&SessionRecord {
                secret_hash: secret_hash(&secret),
                user_name: record.name,
                credential_tag: credential_tag(&record.password_hash),
                created_at: now,
                last_seen_at: now,
                granted: None,
            })
            .await?;
        Ok(secret)
    }

    /// The credential of the session whose secret is `secret`, as its user is now; an unknown,
    /// expired or signed-out session, or one whose user is gone or changed password, is
    /// `InvalidCredentials`.
    pub async fn resume_session(
        &self,
        secret: &str,
        policy: SessionPolicy,
    ) -> Result<Credential, AuthError> {
        if !has_secret_shape(secret) {
            return Err(AuthError::InvalidCredentials);
        }
        let hash = secret_hash(secret);
        let Some(session) = self.store().find_session(&hash).await? else {
            tracing::info!("authentication failed: unknown session");
            return Err(AuthError::InvalidCredentials);
        };
        let now = OffsetDateTime::now_utc();
        let outcome = if now - session.last_seen_at >= to_time(policy.idle)
            || now - session.created_at >= to_time(policy.lifetime)
        {
            Err("the session expired")
        } else {
            match session.granted {
                // A provider's sign-in: what its token granted, until the token expires.
                Some(granted) if now < granted.expires_at => Ok(Credential {
                    name: session.user_name.clone(),
                    scopes: granted.scopes,
                    tenants: granted.tenants,
                }),
                Some(_) => Err("the provider's grant expired"),
                // A local user's: as the user is now, with the password they signed in with.
                None => self
                    .user(&session.user_name)
                    .await?
                    .filter(|u| credential_tag(&u.password_hash) == session.credential_tag)
                    .map(Credential::from)
                    .ok_or("the session's user was removed or changed password"),
            }
        };
        match outcome {
            Ok(credential) => {
                // At most once a minute, and within a quarter of the idle time, so that a
                // short idle limit still counts use, not only the sign-in.
                let touch_every = TOUCH_EVERY.min(to_time(policy.idle / 4));
                if now - session.last_seen_at >= touch_every {
                    self.store().touch_session(&hash, now).await?;
                }
                Ok(credential)
            }
            Err(reason) => {
                tracing::info!(user = %session.user_name, reason, "authentication failed: session ended");
                self.store().remove_session(&hash).await?;
                Err(AuthError::InvalidCredentials)
            }
        }
    }

    /// Ends the session whose secret is `secret` (sign-out); an unknown one is no error.
    pub async fn end_session(&self, secret: &str) -> Result<(), AuthError> {
        if has_secret_shape(secret) {
            self.store().remove_session(&secret_hash(secret)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_and_the_stored_hash_differ_from_the_secret_and_each_other() {
        let secret = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert!(has_secret_shape(&secret));
        let token = csrf_token(&secret);
        assert_eq!(token.len(), 64);
        assert_ne!(token, secret_hash(&secret).to_hex());
        assert!(!token.contains(&secret));
        assert!(!has_secret_shape("short"));
        assert!(!has_secret_shape(&format!("{}=", &secret[..42])));
    }
}
