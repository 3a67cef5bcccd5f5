//! A web viewer's sign-in session: which user it is for, and when it began and was last used.
//! Only the SHA-256 of its secret is stored, so a copy of the database opens no session.

use time::OffsetDateTime;

use super::access::{Scopes, TenantScope};
use super::digest::Digest;

/// A stored session. The secret itself lives only in the browser's cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 of the cookie's secret: the session's key.
    pub secret_hash: Digest,
    /// The user who signed in (a provider's `sub` for a provider's sign-in). A local user's row
    /// is read again on every request, so a removed user or a changed role holds at once.
    pub user_name: String,
    /// SHA-256 of the user's password hash when they signed in: a changed password ends the
    /// session.
    pub credential_tag: Digest,
    pub created_at: OffsetDateTime,
    /// Moved forward as the session is used (at most once a minute), for the idle expiry.
    pub last_seen_at: OffsetDateTime,
    /// For a sign-in through the identity provider: what its access token granted, held as
    /// given until the token's expiry. `None` for a local user's sign-in, whose user row is
    /// read again on every use.
    pub granted: Option<Granted>,
}

/// What an identity provider's access token granted a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub scopes: Scopes,
    pub tenants: TenantScope,
    /// The token's `exp`: the session ends then.
    pub expires_at: OffsetDateTime,
}
