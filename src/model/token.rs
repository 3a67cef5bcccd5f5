//! API tokens, for services: a name, the tenant and scopes they act with, an optional expiry,
//! and the SHA-256 of the secret (never the secret).

use serde::Serialize;
use time::OffsetDateTime;

use super::access::{Scopes, TenantScope};
use super::digest::Digest;

/// A token to store; its secret is already hashed.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub tenant: TenantScope,
    pub scopes: Scopes,
    pub secret_hash: Digest,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// A stored token, as `auditor token list` and `GET /admin/tokens` show it (never its hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenRecord {
    pub name: String,
    /// `*` for every tenant, or the one tenant.
    #[serde(serialize_with = "as_str")]
    #[schema(value_type = String)]
    pub tenant: TenantScope,
    /// The scopes' names, separated by spaces.
    #[serde(serialize_with = "as_string")]
    #[schema(value_type = String)]
    pub scopes: Scopes,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(skip)]
    pub secret_hash: Digest,
}

impl TokenRecord {
    /// Whether the token may be used at `now`: not revoked, not expired.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| now < expiry)
    }
}

fn as_str<S: serde::Serializer>(tenant: &TenantScope, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(tenant.as_str())
}

fn as_string<S: serde::Serializer>(scopes: &Scopes, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(&scopes.to_string())
}
