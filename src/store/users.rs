//! The users table as both backends use it: the same statements and the same outcomes. Its
//! rows are decoded by `rows::user`, which reads the columns these statements select, in order.
//!
//! Placeholders are written `$1`: PostgreSQL's numbered parameter, and to SQLite a parameter
//! named `$1`, which as the statement's only one is bound at index 1.

use super::StoreError;

pub const FIND: &str = "SELECT name, password_hash, role, tenant FROM users WHERE name = $1";
pub const LIST: &str = "SELECT name, password_hash, role, tenant FROM users ORDER BY name";
pub const REMOVE: &str = "DELETE FROM users WHERE name = $1";
/// Users of the role who act in every tenant.
pub const COUNT_WITH_ROLE: &str = "SELECT COUNT(*) FROM users WHERE role = $1 AND tenant = '*'";

/// What adding a user whose name is taken yields.
pub fn name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!("a user named `{name}` already exists"))
}

/// The outcome of [`REMOVE`] that deleted `rows` rows.
pub fn removed(rows: u64) -> Result<(), StoreError> {
    if rows == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}
