//! The SQLite schema's migrations: the numbered files of `src/store/migrations/sqlite/`, embedded
//! in the binary and applied by `rusqlite_migration`, which keeps the number applied in the
//! database header (`PRAGMA user_version`).
//!
//! Databases created before this runner, by sqlx's migrator, record their migrations in a
//! `_sqlx_migrations` table instead (`user_version` 0). They are carried forward, never
//! recreated: while `user_version` is 0 that table says which migrations are applied, once its
//! rows are checked against the embedded files (versions 1..=n in order, each applied
//! successfully, each with the SHA-384 checksum of the same SQL), so a database migrated by
//! another build, or left half-migrated, is refused rather than guessed at. [`migrate`] then
//! moves that number into `user_version` and drops the table, in one transaction, before
//! applying the migrations still pending.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use rusqlite_migration::{M, Migrations, SchemaVersion};
use sha2::{Digest as _, Sha384};

use crate::store::StoreError;

/// The migration files in order; file `000n_…` is migration n, `user_version` n once applied.
/// A unit test checks this list against the folder.
const FILES: [(&str, &str); 17] = [
    (
        "0001_events_and_users.sql",
        include_str!("../migrations/sqlite/0001_events_and_users.sql"),
    ),
    (
        "0002_filter_indexes.sql",
        include_str!("../migrations/sqlite/0002_filter_indexes.sql"),
    ),
    (
        "0003_event_data_index.sql",
        include_str!("../migrations/sqlite/0003_event_data_index.sql"),
    ),
    (
        "0004_event_data_index_quoted_keys.sql",
        include_str!("../migrations/sqlite/0004_event_data_index_quoted_keys.sql"),
    ),
    (
        "0005_chain_heads_recorded_at.sql",
        include_str!("../migrations/sqlite/0005_chain_heads_recorded_at.sql"),
    ),
    (
        "0006_users_generation.sql",
        include_str!("../migrations/sqlite/0006_users_generation.sql"),
    ),
    (
        "0007_merkle_tiles.sql",
        include_str!("../migrations/sqlite/0007_merkle_tiles.sql"),
    ),
    (
        "0008_entity_index_without_entity_id.sql",
        include_str!("../migrations/sqlite/0008_entity_index_without_entity_id.sql"),
    ),
    (
        "0009_postings.sql",
        include_str!("../migrations/sqlite/0009_postings.sql"),
    ),
    (
        "0010_posting_lists.sql",
        include_str!("../migrations/sqlite/0010_posting_lists.sql"),
    ),
    (
        "0011_leaf_version_2.sql",
        include_str!("../migrations/sqlite/0011_leaf_version_2.sql"),
    ),
    (
        "0012_checkpoint_predecessor.sql",
        include_str!("../migrations/sqlite/0012_checkpoint_predecessor.sql"),
    ),
    (
        "0013_user_tenants.sql",
        include_str!("../migrations/sqlite/0013_user_tenants.sql"),
    ),
    (
        "0014_api_tokens.sql",
        include_str!("../migrations/sqlite/0014_api_tokens.sql"),
    ),
    (
        "0015_capture_positions.sql",
        include_str!("../migrations/sqlite/0015_capture_positions.sql"),
    ),
    (
        "0016_ui_sessions.sql",
        include_str!("../migrations/sqlite/0016_ui_sessions.sql"),
    ),
    (
        "0017_events_keyed_by_tenant_and_seq.sql",
        include_str!("../migrations/sqlite/0017_events_keyed_by_tenant_and_seq.sql"),
    ),
];

static STEPS: [M<'static>; FILES.len()] = [
    M::up(FILES[0].1),
    M::up(FILES[1].1),
    M::up(FILES[2].1),
    M::up(FILES[3].1),
    M::up(FILES[4].1),
    M::up(FILES[5].1),
    M::up(FILES[6].1),
    M::up(FILES[7].1),
    M::up(FILES[8].1),
    M::up(FILES[9].1),
    M::up(FILES[10].1),
    M::up(FILES[11].1),
    M::up(FILES[12].1),
    M::up(FILES[13].1),
    M::up(FILES[14].1),
    M::up(FILES[15].1),
    M::up(FILES[16].1),
];

static MIGRATIONS: Migrations<'static> = Migrations::from_slice(&STEPS);

/// The table in which sqlx's migrator recorded the migrations it applied.
const SQLX_TABLE: &str = "_sqlx_migrations";

fn migration_error(error: rusqlite_migration::Error) -> StoreError {
    match error {
        rusqlite_migration::Error::RusqliteError { err, .. } => err.into(),
        other => StoreError::Other(anyhow::Error::new(other).context("migrating the database")),
    }
}

/// How many of the embedded migrations the database has applied.
fn applied(conn: &Connection) -> Result<usize, StoreError> {
    match MIGRATIONS.current_version(conn).map_err(migration_error)? {
        SchemaVersion::NoneSet => Ok(applied_by_sqlx(conn)?.unwrap_or(0)),
        SchemaVersion::Inside(version) => Ok(version.get()),
        SchemaVersion::Outside(version) => Err(StoreError::Other(anyhow::anyhow!(
            "the database is at migration {version}, newer than this binary's {}: \
             run the auditor version that migrated it",
            FILES.len()
        ))),
    }
}

/// Versions of the embedded migrations the database has not applied, in order.
pub(super) fn pending(conn: &Connection) -> Result<Vec<i64>, StoreError> {
    let applied = applied(conn)?;
    Ok((applied + 1..=FILES.len()).map(|v| v as i64).collect())
}

/// Applies the pending migrations, after carrying a database of sqlx's migrator forward.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Brings this connection's copy of the schema up to date under the write lock: SQLite checks
    // it only when a statement reads the file, and the migrations' DDL is prepared against it
    // (another process, or a tool, may have changed the schema since this connection last read).
    tx.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    if MIGRATIONS.current_version(&tx).map_err(migration_error)? == SchemaVersion::NoneSet
        && let Some(version) = applied_by_sqlx(&tx)?
    {
        tx.pragma_update(None, "user_version", version as i64)?;
        tx.execute_batch(&format!("DROP TABLE {SQLX_TABLE}"))?;
        tracing::info!(
            version,
            "carried the database forward from sqlx's migration table"
        );
    }
    tx.commit()?;
    MIGRATIONS.to_latest(conn).map_err(migration_error)
}

/// The number of migrations sqlx's migrator applied, if it migrated this database; an error if
/// its record does not match the embedded migrations.
fn applied_by_sqlx(conn: &Connection) -> Result<Option<usize>, StoreError> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            [SQLX_TABLE],
            |row| row.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let mut rows = conn.prepare(&format!(
        "SELECT version, success, checksum FROM {SQLX_TABLE} ORDER BY version"
    ))?;
    let rows = rows
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, bool>(1)?,
                row.get::<_, Vec<u8>>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let refuse = |why: String| {
        Err(StoreError::Other(anyhow::anyhow!(
            "the database's {SQLX_TABLE} table (from an earlier auditor) {why}; \
             it was left as it is"
        )))
    };
    for (i, (version, success, checksum)) in rows.iter().enumerate() {
        let Some((file, sql)) = FILES.get(i).filter(|_| *version == i as i64 + 1) else {
            return refuse(format!(
                "lists migration {version} where this binary has migration {} next",
                i + 1
            ));
        };
        if !success {
            return refuse(format!("says migration {file} failed partway"));
        }
        if checksum.as_slice() != Sha384::digest(sql.as_bytes()).as_slice() {
            return refuse(format!(
                "lists a migration {version} whose SQL differs from this binary's {file}"
            ));
        }
    }
    Ok(Some(rows.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

    /// Migration 0017 numbers every tenant that has events or a chain head, and copies every
    /// event into the table keyed by its tenant's number and `seq`, whatever order the tenants'
    /// events were recorded in.
    #[test]
    fn migration_17_keys_every_event_by_its_tenant_and_seq() {
        let mut conn = Connection::open_in_memory().unwrap();
        MIGRATIONS.to_version(&mut conn, 16).unwrap();
        let mut insert = conn
            .prepare(
                "INSERT INTO events (tenant, seq, id, event_type, user_identity, occurred_at, \
                 recorded_at, recorded_by, request_hash, leaf_hash, prev_hash, hash) \
                 VALUES (?1, ?2, ?3, 't', 'u', 0, 0, 'r', x'00', x'00', x'00', x'00')",
            )
            .unwrap();
        // Interleaved, as concurrent tenants append; `b` has no chain head (a head lost).
        let rows = [("b", 1), ("a", 1), ("b", 2), ("a", 2), ("a", 3), ("b", 3)];
        for (at, (tenant, seq)) in rows.iter().enumerate() {
            insert.execute(params![tenant, seq, [at as u8]]).unwrap();
        }
        drop(insert);
        conn.execute_batch(
            "INSERT INTO chain_heads (tenant, seq, hash) VALUES ('a', 3, x'00'), ('c', 0, x'00')",
        )
        .unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        let numbers: Vec<(String, i64)> = conn
            .prepare("SELECT tenant, number FROM tenant_numbers ORDER BY number")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            numbers,
            [
                ("a".to_owned(), 1),
                ("b".to_owned(), 2),
                ("c".to_owned(), 3)
            ]
        );
        let keyed: Vec<(i64, String, i64, Vec<u8>)> = conn
            .prepare("SELECT key, tenant, seq, id FROM events ORDER BY key")
            .unwrap()
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<(i64, String, i64, Vec<u8>)> = [1, 3, 4, 0, 2, 5]
            .into_iter()
            .map(|at: usize| {
                let (tenant, seq) = rows[at];
                let number = if tenant == "a" { 1 } else { 2 };
                (number << 40 | seq, tenant.to_owned(), seq, vec![at as u8])
            })
            .collect();
        assert_eq!(keyed, expected);
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            indexes.len(),
            4,
            "id, idempotency_key, occurred_at and amends; no (tenant, seq): {indexes:?}"
        );
        let astray = conn.execute(
            "INSERT INTO events (key, tenant, seq, id, event_type, user_identity, occurred_at, \
             recorded_at, recorded_by, request_hash, leaf_hash, prev_hash, hash) \
             VALUES (1 << 40 | 7, 'a', 8, x'09', 't', 'u', 0, 0, 'r', x'00', x'00', x'00', x'00')",
            [],
        );
        assert!(
            astray.is_err(),
            "the key's check holds `seq` to its low bits"
        );
    }

    #[test]
    fn the_embedded_list_is_the_migrations_folder() {
        let folder =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations/sqlite");
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let embedded: Vec<&str> = FILES.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, embedded);
        for (i, (name, sql)) in FILES.iter().enumerate() {
            assert!(name.starts_with(&format!("{:04}_", i + 1)), "{name}");
            assert_eq!(std::fs::read_to_string(folder.join(name)).unwrap(), *sql);
        }
        MIGRATIONS.validate().unwrap();
    }

    /// The trigger lets a redaction through by comparing every other column, by name: a column
    /// declared after it was written would be rewritable in a redaction until it is added there.
    #[test]
    fn the_update_trigger_compares_every_declared_column_but_the_erasable() {
        use crate::model::FIELDS;
        use crate::model::fields::Flag;

        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let trigger: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' \
                 AND name = 'events_are_never_updated'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        let compared = |name: &str| trigger.contains(&format!("NEW.{name} IS OLD.{name}"));
        for field in FIELDS {
            if field.is(Flag::Erasable) {
                let name = field.name;
                assert!(
                    trigger.contains(&format!("(NEW.{name} IS OLD.{name} OR NEW.{name} IS"))
                        || trigger.contains(&format!("NEW.{name} IS NOT NULL AND (OLD.{name}")),
                    "the erasure condition names {name}"
                );
            } else {
                assert!(
                    compared(field.name),
                    "events_are_never_updated does not compare {}: \
                     a migration must add it to the trigger",
                    field.name
                );
            }
        }
    }
}
