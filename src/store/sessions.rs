//! The web viewer's sessions table as both backends use it: the same statements, decoded by
//! `rows::session` in the order these select. Placeholders as in `store::users`: `$n` is
//! PostgreSQL's n-th parameter and, to SQLite, a parameter bound at the position of its first
//! appearance, so each statement names its parameters in order.

/// The columns [`super::rows::session`] reads, in its order.
const COLUMNS: &str =
    "secret_hash, user_name, credential_tag, created_at, last_seen_at, scopes, tenant, expires_at";

pub static FIND: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {COLUMNS} FROM ui_sessions WHERE secret_hash = $1")
});
pub const INSERT: &str = "INSERT INTO ui_sessions \
     (secret_hash, user_name, credential_tag, created_at, last_seen_at, scopes, tenant, \
     expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
/// Moves `last_seen_at` forward only: two instances touching at once never move it back.
pub const TOUCH: &str =
    "UPDATE ui_sessions SET last_seen_at = $1 WHERE secret_hash = $2 AND last_seen_at < $1";
pub const REMOVE: &str = "DELETE FROM ui_sessions WHERE secret_hash = $1";
/// Sessions idle since before `$1` or begun before `$2`.
pub const REMOVE_EXPIRED: &str =
    "DELETE FROM ui_sessions WHERE last_seen_at < $1 OR created_at < $2";
