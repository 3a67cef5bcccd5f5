//! The API tokens table as both backends use it: the same statements, decoded by `rows::token`
//! in the order these select. Placeholders as in `store::users`.

use super::StoreError;

/// The columns [`super::rows::token`] reads, in its order.
const COLUMNS: &str = "name, tenant, scopes, secret_hash, created_at, expires_at, revoked_at";

pub static FIND: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {COLUMNS} FROM api_tokens WHERE secret_hash = $1"));
pub static LIST: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {COLUMNS} FROM api_tokens ORDER BY name"));
/// Revokes a token once: a second revocation keeps the first time.
pub const REVOKE: &str =
    "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1";

/// What adding a token whose name is taken yields: names stay unique, revoked ones included, so
/// that a name in the log always means one token.
pub fn name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!("a token named `{name}` already exists"))
}
