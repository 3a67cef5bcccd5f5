//! Rows as both backends read and write them: the event's column list, derived from its
//! declaration (`model::fields`), and one decoder per row type over a backend's [`ReadRow`].
//! A backend only says how it reads one column of a [`Kind`]; what the row means is said here.

use std::sync::LazyLock;

use super::{StoreError, corrupt, decode_frontier, decode_role};
use crate::integrity::{Chained, Checkpoint, Digest};
use crate::model::fields::{Cell, Kind, Stored};
use crate::model::session::{Granted, SessionRecord};
use crate::model::token::TokenRecord;
use crate::model::user::UserRecord;
use crate::model::{Event, FIELDS, Scopes, Seq, TenantId, TenantScope};

/// The event columns, in declared order: how both backends select and insert them.
pub static EVENT_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    FIELDS
        .iter()
        .map(|field| field.name)
        .collect::<Vec<_>>()
        .join(", ")
});

/// One row of a result, read a column at a time.
pub trait ReadRow<'r> {
    /// The named column as `kind`; `None` for NULL. Callers read the columns in the order they
    /// were selected (SQLite's reader goes by position).
    fn cell(&mut self, column: &'static str, kind: Kind) -> Result<Option<Cell<'r>>, StoreError>;
}

/// A column as the type `T` stores it.
fn get<'r, T: Stored>(row: &mut impl ReadRow<'r>, column: &'static str) -> Result<T, StoreError> {
    T::from_column(row.cell(column, T::KIND)?).map_err(|detail| corrupt(column, detail))
}

/// An event from a row of [`EVENT_COLUMNS`].
pub fn event<'r>(row: &mut impl ReadRow<'r>) -> Result<Event, StoreError> {
    Event::from_columns(|column, kind| row.cell(column, kind), corrupt)
}

/// A user from a row of `name, password_hash, role` (the statements of `store::users`).
pub fn user<'r>(row: &mut impl ReadRow<'r>) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        name: get(row, "name")?,
        password_hash: get(row, "password_hash")?,
        role: decode_role(&get::<String>(row, "role")?)?,
        tenant: TenantScope::parse(&get::<String>(row, "tenant")?)
            .map_err(|e| super::corrupt("users.tenant", e))?,
    })
}

/// A token from a row of the statements of `store::tokens`.
pub fn token<'r>(row: &mut impl ReadRow<'r>) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        name: get(row, "name")?,
        tenant: TenantScope::parse(&get::<String>(row, "tenant")?)
            .map_err(|e| corrupt("api_tokens.tenant", e))?,
        scopes: Scopes::parse(&get::<String>(row, "scopes")?)
            .map_err(|e| corrupt("api_tokens.scopes", e))?,
        secret_hash: get(row, "secret_hash")?,
        created_at: get(row, "created_at")?,
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
    })
}

/// A session from a row of the statements of `store::sessions`.
pub fn session<'r>(row: &mut impl ReadRow<'r>) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        secret_hash: get(row, "secret_hash")?,
        user_name: get(row, "user_name")?,
        credential_tag: get(row, "credential_tag")?,
        created_at: get(row, "created_at")?,
        last_seen_at: get(row, "last_seen_at")?,
        granted: match (
            get::<Option<String>>(row, "scopes")?,
            get::<Option<String>>(row, "tenant")?,
            get::<Option<time::OffsetDateTime>>(row, "expires_at")?,
        ) {
            (Some(scopes), Some(tenant), Some(expires_at)) => Some(Granted {
                scopes: Scopes::parse(&scopes).map_err(|e| corrupt("ui_sessions.scopes", e))?,
                tenants: TenantScope::parse(&tenant)
                    .map_err(|e| corrupt("ui_sessions.tenant", e))?,
                expires_at,
            }),
            (None, None, None) => None,
            _ => return Err(corrupt("ui_sessions", "a grant without all of its columns")),
        },
    })
}

/// The columns [`checkpoint`] reads, in its order.
pub const CHECKPOINT_COLUMNS: &str = "tenant, tree_size, root_hash, issued_at, note";

pub fn checkpoint<'r>(row: &mut impl ReadRow<'r>) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        tenant: get::<TenantId>(row, "tenant")?,
        tree_size: get::<i64>(row, "tree_size")? as u64,
        root: get::<Digest>(row, "root_hash")?,
        issued_at: get(row, "issued_at")?,
        note: get(row, "note")?,
    })
}

/// A tenant's chain head, as [`head`] reads it. `$1` is PostgreSQL's first parameter, and to
/// SQLite a parameter named `$1`, bound at index 1 as the statement's only one.
pub const SELECT_HEAD: &str = "SELECT seq, hash, partial_tiles, recorded_at, recorded_at_ordered_from \
     FROM chain_heads WHERE tenant = $1";

pub fn head<'r>(row: &mut impl ReadRow<'r>) -> Result<Chained, StoreError> {
    let seq = get::<Seq>(row, "seq")?;
    let hash = get::<Digest>(row, "hash")?;
    let partial_tiles = get::<Option<Vec<u8>>>(row, "partial_tiles")?.unwrap_or_default();
    Ok(Chained {
        seq,
        hash,
        frontier: decode_frontier(seq.0, &partial_tiles)?,
        recorded_at: get(row, "recorded_at")?,
        recorded_at_ordered_from: get(row, "recorded_at_ordered_from")?,
    })
}
