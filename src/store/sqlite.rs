//! The embedded backend: one SQLite file in WAL mode. Appends go through a single-connection
//! pool in `BEGIN IMMEDIATE` transactions; reads use a separate pool and never wait for them.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Row, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use super::assemble::{self, CommitClock, KeyIndex};
use super::{
    Appended, EVENT_COLUMNS, INSERT_EVENT_COLUMNS, Store, StoreError, corrupt, decode_digest,
    decode_frontier, decode_role, pending_versions,
};
use crate::integrity::merkle::NodeId;
use crate::integrity::{Chained, Checkpoint, Digest};
use crate::model::event::truncate_to_micros;
use crate::model::payload;
use crate::model::user::{NewUser, Role, UserRecord};
use crate::model::{
    Action, Event, EventId, EventQuery, Field, Filter, JsonPath, JsonScalar, Order, Outcome, Seq,
    Submission, TenantId,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");

/// The writer's page cache, in KiB (SQLite's negative `cache_size`). Every append walks the
/// right-hand edge of some fifteen indexes and random leaves of the high-cardinality ones, more
/// pages than the default 2 MiB holds once the log is large.
const WRITER_CACHE_KIB: &str = "-65536";

/// How often the background checkpointer copies the WAL into the database file.
const WAL_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// How often the planner's statistics are brought up to date (`PRAGMA optimize`), in ticks of
/// the checkpointer: every 30 s.
const OPTIMIZE_EVERY_TICKS: u32 = 150;

/// WAL pages after which the writer checkpoints by itself: only a safety net for when the
/// background checkpointer cannot keep up (SQLite's default is 1000).
const WRITER_AUTOCHECKPOINT_PAGES: &str = "16384";

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    clock: Arc<CommitClock>,
    /// The background checkpointer stops once every clone of the store is gone.
    _checkpointer_guard: Arc<()>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://path` URL.
    pub async fn connect(url: &str, max_readers: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // FULL: a commit is on disk before the writer acknowledges it, even across power loss.
        // Group commit amortises the fsync over every event in the batch.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                options
                    .clone()
                    .synchronous(SqliteSynchronous::Full)
                    .pragma("cache_size", WRITER_CACHE_KIB)
                    .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES),
            )
            .await?;
        let checkpointer = options
            .clone()
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(max_readers.max(1))
            .connect_with(options.read_only(true))
            .await?;
        let guard = Arc::new(());
        tokio::spawn(maintain_database_file(checkpointer, Arc::downgrade(&guard)));
        Ok(Self {
            writer,
            readers,
            clock: Arc::default(),
            _checkpointer_guard: guard,
        })
    }
}

/// Copies the WAL back into the database file on a connection of its own. Left to the writer,
/// every thousandth page of WAL makes one commit also write and fsync the database file, which
/// cost a third of the append rate; here that work runs beside the appends, which keep writing
/// to the WAL meanwhile (a PASSIVE checkpoint never blocks them).
///
/// The same connection keeps the planner's statistics current (nobody else runs ANALYZE on an
/// embedded database): with them SQLite can weigh an index over a filter against walking `seq`
/// for the page order. `analysis_limit` bounds each ANALYZE to a sample, and `optimize` skips
/// tables whose statistics are still good.
async fn maintain_database_file(mut conn: sqlx::SqliteConnection, store: Weak<()>) {
    let mut tick = tokio::time::interval(WAL_CHECKPOINT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for ticks in 0u32.. {
        tick.tick().await;
        if store.strong_count() == 0 {
            break;
        }
        if ticks % OPTIMIZE_EVERY_TICKS == OPTIMIZE_EVERY_TICKS - 1
            && let Err(error) =
                sqlx::raw_sql("PRAGMA analysis_limit = 1000; PRAGMA optimize = 0x10002")
                    .execute(&mut conn)
                    .await
        {
            tracing::warn!(%error, "updating the query planner's statistics failed");
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(%error, "WAL checkpoint failed; the writer's own checkpoints remain");
        }
    }
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

fn from_micros(column: &str, micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| corrupt(column, e))
}

fn event_from_row(row: &SqliteRow) -> Result<Event, StoreError> {
    let uuid = |column: &str| -> Result<Option<EventId>, StoreError> {
        let bytes: Option<Vec<u8>> = row.try_get(column)?;
        bytes
            .map(|b| {
                Uuid::from_slice(&b)
                    .map(EventId)
                    .map_err(|e| corrupt(column, e))
            })
            .transpose()
    };
    let digest = |column: &str| -> Result<_, StoreError> {
        let bytes: Vec<u8> = row.try_get(column)?;
        decode_digest(column, &bytes)
    };
    let optional_digest = |column: &str| -> Result<_, StoreError> {
        let bytes: Option<Vec<u8>> = row.try_get(column)?;
        bytes.map(|b| decode_digest(column, &b)).transpose()
    };
    let redacted_at: Option<i64> = row.try_get("redacted_at")?;
    let event_data: Option<String> = row.try_get("event_data")?;
    let event_data = event_data
        .map(|text| serde_json::from_str::<Map<String, Value>>(&text).map(payload::normalized))
        .transpose()
        .map_err(|e| corrupt("event_data", e))?;
    let action: Option<String> = row.try_get("action")?;
    let outcome: Option<String> = row.try_get("outcome")?;
    Ok(Event {
        id: uuid("id")?.ok_or_else(|| corrupt("id", "missing"))?,
        seq: Seq(row.try_get("seq")?),
        tenant: TenantId::new(row.try_get::<String, _>("tenant")?),
        event_type: row.try_get("event_type")?,
        user_identity: row.try_get("user_identity")?,
        action: action
            .map(|a| Action::parse(&a).ok_or_else(|| corrupt("action", a)))
            .transpose()?,
        entity: row.try_get("entity")?,
        entity_id: row.try_get("entity_id")?,
        property: row.try_get("property")?,
        source: row.try_get("source")?,
        ip: row.try_get("ip")?,
        outcome: outcome
            .map(|o| Outcome::parse(&o).ok_or_else(|| corrupt("outcome", o)))
            .transpose()?,
        occurred_at: from_micros("occurred_at", row.try_get("occurred_at")?)?,
        recorded_at: from_micros("recorded_at", row.try_get("recorded_at")?)?,
        recorded_by: row.try_get("recorded_by")?,
        event_data,
        event_data_hash: optional_digest("event_data_hash")?,
        redacted_at: redacted_at
            .map(|t| from_micros("redacted_at", t))
            .transpose()?,
        idempotency_key: row.try_get("idempotency_key")?,
        amends: uuid("amends")?,
        amends_hash: optional_digest("amends_hash")?,
        request_hash: digest("request_hash")?,
        leaf_hash: digest("leaf_hash")?,
        prev_hash: digest("prev_hash")?,
        hash: digest("hash")?,
    })
}

/// Rows per multi-row INSERT: 24 binds each stays well under SQLite's 32766 bind limit.
const ROWS_PER_INSERT: usize = 500;

/// Inserts a batch's rows with a few multi-row statements instead of one per row.
async fn insert_events(
    conn: &mut sqlx::SqliteConnection,
    events: &[Event],
) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let mut builder = QueryBuilder::<Sqlite>::new(INSERT_EVENT_COLUMNS);
        builder.push_values(chunk, |mut row, event| {
            let event_data = event
                .event_data
                .as_ref()
                .map(|data| serde_json::to_string(data).unwrap_or_default());
            row.push_bind(event.tenant.as_str().to_owned())
                .push_bind(event.seq.0)
                .push_bind(event.id.0)
                .push_bind(event.event_type.clone())
                .push_bind(event.user_identity.clone())
                .push_bind(event.action.map(Action::as_str))
                .push_bind(event.entity.clone())
                .push_bind(event.entity_id.clone())
                .push_bind(event.property.clone())
                .push_bind(event.source.clone())
                .push_bind(event.ip.clone())
                .push_bind(event.outcome.map(Outcome::as_str))
                .push_bind(micros(event.occurred_at))
                .push_bind(micros(event.recorded_at))
                .push_bind(event.recorded_by.clone())
                .push_bind(event_data)
                .push_bind(event.event_data_hash.map(|d| d.0.to_vec()))
                .push_bind(event.idempotency_key.clone())
                .push_bind(event.amends.map(|a| a.0))
                .push_bind(event.amends_hash.map(|d| d.0.to_vec()))
                .push_bind(event.request_hash.0.to_vec())
                .push_bind(event.leaf_hash.0.to_vec())
                .push_bind(event.prev_hash.0.to_vec())
                .push_bind(event.hash.0.to_vec());
        });
        builder.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Strings longer than this many characters are indexed by this long a prefix (migration 0003).
const INDEXED_TEXT_PREFIX: usize = 128;

/// A leaf of `event_data` as `event_data_index` stores it (migration 0003): SQLite's own typing of
/// the JSON value, `null`/`true`/`false` as blobs, long strings as the blob of their prefix.
enum IndexedValue<'a> {
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl<'a> IndexedValue<'a> {
    fn of(value: &'a Value) -> Option<Self> {
        Some(match value {
            Value::Null => Self::Blob(b"null"),
            Value::Bool(true) => Self::Blob(b"true"),
            Value::Bool(false) => Self::Blob(b"false"),
            // As SQLite's JSON parser: an integer beyond i64 is a real.
            Value::Number(n) => match n.as_i64() {
                Some(i) => Self::Integer(i),
                None => Self::Real(n.as_f64()?),
            },
            Value::String(s) => Self::text(s),
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    /// A query's value in the form its leaves are stored in.
    fn of_scalar(scalar: &'a JsonScalar) -> Self {
        match scalar {
            JsonScalar::Null => Self::Blob(b"null"),
            JsonScalar::Bool(true) => Self::Blob(b"true"),
            JsonScalar::Bool(false) => Self::Blob(b"false"),
            JsonScalar::Integer(i) => Self::Integer(*i),
            JsonScalar::Float(f) => Self::Real(*f),
            JsonScalar::String(s) => Self::text(s),
        }
    }

    /// Characters, not bytes, as SQLite's `length()` in the migration's view counts them.
    fn text(s: &'a str) -> Self {
        match s.char_indices().nth(INDEXED_TEXT_PREFIX) {
            Some((end, _)) => Self::Blob(&s.as_bytes()[..end]),
            None => Self::Text(s),
        }
    }
}

/// Appends one key to a path as `event_data_index.path` writes it (migration 0004): joined by
/// `.`, each key as it is, unless it is empty or holds `.` or `"`; such a key is written as its
/// JSON string literal (`"a.b".c` for `{"a.b": {"c": …}}`, `a.b.c` for `{"a": {"b": {"c": …}}}`).
///
/// Unambiguous: a key written as it is holds no `.` and does not start with `"`, and a literal
/// ends at its unescaped closing quote. This is not the query syntax, which also quotes keys
/// such as `a b`: the rule must be one that SQL can apply (the migration rewrote the rows of
/// existing events with `json_quote`, which writes exactly what serde_json writes), and it keeps
/// the rows written before 0004 valid for every key that holds neither character.
fn push_index_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    if key.is_empty() || key.contains(['.', '"']) {
        path.push_str(&Value::from(key).to_string());
    } else {
        path.push_str(key);
    }
}

/// A query path as `event_data_index.path` writes it.
fn index_path(segments: &[String]) -> String {
    let mut path = String::new();
    for key in segments {
        push_index_key(&mut path, key);
    }
    path
}

/// Every scalar leaf reached through objects only, with its path: the rows of
/// `event_data_index` for one payload, which the appender inserts and a redaction deletes.
/// Computed here rather than by a trigger running `json_tree` per row, which tripled the cost
/// of an append; migration 0004 derives the same rows in SQL for the events it rewrote.
fn indexed_leaves<'a>(
    prefix: &str,
    data: &'a Map<String, Value>,
    leaves: &mut Vec<(String, IndexedValue<'a>)>,
) {
    for (key, value) in data {
        let mut path = prefix.to_owned();
        push_index_key(&mut path, key);
        match value {
            Value::Object(inner) => indexed_leaves(&path, inner, leaves),
            other => {
                if let Some(indexed) = IndexedValue::of(other) {
                    leaves.push((path, indexed));
                }
            }
        }
    }
}

/// Binds of one `event_data_index` row; 8000 rows stay under SQLite's 32766 bind limit.
const INDEX_ROWS_PER_INSERT: usize = 8000;

async fn insert_index_rows(
    conn: &mut sqlx::SqliteConnection,
    events: &[Event],
) -> Result<(), StoreError> {
    let mut rows = Vec::new();
    for event in events {
        let Some(data) = &event.event_data else {
            continue;
        };
        let mut leaves = Vec::new();
        indexed_leaves("", data, &mut leaves);
        rows.extend(
            leaves
                .into_iter()
                .map(|(path, value)| (event.tenant.as_str(), path, value, event.seq.0)),
        );
    }
    for chunk in rows.chunks(INDEX_ROWS_PER_INSERT) {
        // OR IGNORE: no two leaves of a payload share a path (`push_index_key` is unambiguous),
        // but derived data should never be the reason an append fails.
        let mut builder = QueryBuilder::<Sqlite>::new(
            "INSERT OR IGNORE INTO event_data_index (tenant, path, value, seq) ",
        );
        builder.push_values(chunk, |mut row, (tenant, path, value, seq)| {
            row.push_bind(*tenant).push_bind(path.as_str());
            match value {
                IndexedValue::Integer(i) => row.push_bind(*i),
                IndexedValue::Real(f) => row.push_bind(*f),
                IndexedValue::Text(t) => row.push_bind(*t),
                IndexedValue::Blob(b) => row.push_bind(*b),
            };
            row.push_bind(*seq);
        });
        builder.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Redacts one event: erases its payload and, in the same transaction, deletes the
/// `event_data_index` rows derived from it, so that an erased value cannot be found again. The
/// rows are computed by `indexed_leaves`, as the appender computed them, and deleted by primary
/// key. (Until migration 0004 a trigger did this from a SQL view; no view can derive the
/// encoding of `push_index_key` without a recursive query, which a trigger cannot run cheaply.)
/// An UPDATE made by hand, outside the service, erases the payload but leaves its rows; it also
/// records no `audit.redacted` event, so it is no redaction the log knows of.
async fn erase_payload(
    conn: &mut sqlx::SqliteConnection,
    tenant: &TenantId,
    target: EventId,
    recorded_at: OffsetDateTime,
) -> Result<(), StoreError> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT seq, event_data FROM events \
         WHERE tenant = ? AND id = ? AND redacted_at IS NULL AND event_data IS NOT NULL",
    )
    .bind(tenant.as_str())
    .bind(target.0)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((seq, data)) = row else {
        return Ok(());
    };
    let data: Map<String, Value> =
        serde_json::from_str(&data).map_err(|e| corrupt("event_data", e))?;
    let mut leaves = Vec::new();
    indexed_leaves("", &data, &mut leaves);
    for (path, value) in leaves {
        let mut builder =
            QueryBuilder::<Sqlite>::new("DELETE FROM event_data_index WHERE tenant = ");
        builder.push_bind(tenant.as_str());
        builder.push(" AND path = ").push_bind(path);
        builder.push(" AND value = ");
        push_index_value(&mut builder, value);
        builder.push(" AND seq = ").push_bind(seq);
        builder.build().execute(&mut *conn).await?;
    }
    sqlx::query(
        "UPDATE events SET event_data = NULL, redacted_at = ? WHERE tenant = ? AND seq = ?",
    )
    .bind(micros(recorded_at))
    .bind(tenant.as_str())
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert_nodes(
    conn: &mut sqlx::SqliteConnection,
    nodes: &[(TenantId, NodeId, Digest)],
) -> Result<(), StoreError> {
    for chunk in nodes.chunks(ROWS_PER_INSERT) {
        let mut builder =
            QueryBuilder::<Sqlite>::new("INSERT INTO merkle_nodes (tenant, level, idx, hash) ");
        builder.push_values(chunk, |mut row, (tenant, node, hash)| {
            row.push_bind(tenant.as_str().to_owned())
                .push_bind(i64::from(node.level))
                .push_bind(node.index as i64)
                .push_bind(hash.0.to_vec());
        });
        builder.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The SQLite JSON path of a query's path: `$."a.b"."we\\"ird"`, each key as its JSON string
/// literal. Bound as a parameter, never inlined: the keys are the client's text.
///
/// Exact for every key a query can name: SQLite (3.51, as bundled) reads a quoted label up to
/// its first unescaped `"` and compares it with the payload's keys after decoding JSON escapes
/// on both sides, which the tests check for keys holding `.`, `"`, `\\` and control characters.
/// The one key it cannot address is one holding U+0000 (the lookup stops at it), and
/// `JsonPath` refuses those.
fn sqlite_json_path(segments: &[String]) -> String {
    let mut path = String::from("$");
    for segment in segments {
        path.push('.');
        path.push_str(&Value::from(segment.as_str()).to_string());
    }
    path
}

fn push_filter(builder: &mut QueryBuilder<Sqlite>, filter: &Filter) -> Result<(), StoreError> {
    match filter {
        Filter::Equals(field @ (Field::Id | Field::Amends), value) => {
            let id = EventId::from_str(value).map_err(|e| StoreError::Other(e.into()))?;
            builder.push(format!(" AND {} = ", field.name()));
            builder.push_bind(id.0);
        }
        Filter::Equals(field, value) => {
            builder.push(format!(" AND {} = ", field.name()));
            builder.push_bind(value.clone());
        }
        Filter::Data(path, value) => {
            let path = sqlite_json_path(path.segments());
            let json_type = match value {
                JsonScalar::Null => ") = 'null'",
                JsonScalar::Bool(true) => ") = 'true'",
                JsonScalar::Bool(false) => ") = 'false'",
                JsonScalar::Integer(_) | JsonScalar::Float(_) => ") IN ('integer', 'real')",
                JsonScalar::String(_) => ") = 'text'",
            };
            builder
                .push(" AND json_type(event_data, ")
                .push_bind(path.clone())
                .push(json_type);
            let extract = |builder: &mut QueryBuilder<Sqlite>| {
                builder
                    .push(" AND json_extract(event_data, ")
                    .push_bind(path.clone())
                    .push(") = ");
            };
            match value {
                JsonScalar::Null | JsonScalar::Bool(_) => {}
                JsonScalar::Integer(i) => {
                    extract(builder);
                    builder.push_bind(*i);
                }
                // SQLite's own reading of a stored double is not always correctly rounded (an
                // exponent beyond ±100 can come out one unit off), so the number's stored text,
                // which is serde_json's shortest form like the query's, is compared as well.
                JsonScalar::Float(f) => {
                    builder
                        .push(" AND (json_extract(event_data, ")
                        .push_bind(path.clone())
                        .push(") = ")
                        .push_bind(*f)
                        .push(" OR (event_data -> ")
                        .push_bind(path)
                        .push(") = ")
                        .push_bind(serde_json::to_string(f).unwrap_or_default())
                        .push(")");
                }
                JsonScalar::String(s) => {
                    extract(builder);
                    builder.push_bind(s.clone());
                }
            }
        }
    }
    Ok(())
}

async fn read_head(
    conn: &mut sqlx::SqliteConnection,
    tenant: &TenantId,
) -> Result<Option<Chained>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, hash, frontier, recorded_at, recorded_at_ordered_from \
             FROM chain_heads WHERE tenant = ?",
    )
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        let seq: i64 = row.try_get("seq")?;
        let hash: Vec<u8> = row.try_get("hash")?;
        let frontier: Vec<u8> = row.try_get("frontier")?;
        let recorded_at: Option<i64> = row.try_get("recorded_at")?;
        Ok(Chained {
            seq: Seq(seq),
            hash: decode_digest("chain_heads.hash", &hash)?,
            frontier: decode_frontier(seq, &frontier)?,
            recorded_at: recorded_at
                .map(|t| from_micros("chain_heads.recorded_at", t))
                .transpose()?,
            recorded_at_ordered_from: Seq(row.try_get("recorded_at_ordered_from")?),
        })
    })
    .transpose()
}

fn checkpoint_from_row(row: &SqliteRow) -> Result<Checkpoint, StoreError> {
    let root: Vec<u8> = row.try_get("root_hash")?;
    Ok(Checkpoint {
        tenant: TenantId::new(row.try_get::<String, _>("tenant")?),
        tree_size: row.try_get::<i64, _>("tree_size")? as u64,
        root: decode_digest("checkpoints.root_hash", &root)?,
        issued_at: from_micros("issued_at", row.try_get("issued_at")?)?,
        note: row.try_get("note")?,
    })
}

/// Binds a value as `event_data_index` stores it.
fn push_index_value(builder: &mut QueryBuilder<Sqlite>, value: IndexedValue) {
    match value {
        IndexedValue::Integer(i) => builder.push_bind(i),
        IndexedValue::Real(f) => builder.push_bind(f),
        IndexedValue::Text(t) => builder.push_bind(t.to_owned()),
        IndexedValue::Blob(b) => builder.push_bind(b.to_vec()),
    };
}

/// The SQL of an event query (optionally prefixed, e.g. by `EXPLAIN`), with bound values only.
///
/// Without `event_data` filters this reads `events` alone. With them, each filter joins
/// `event_data_index` (as `d0`, `d1`, …) on `(tenant, path, value)`, and the query pages by
/// `d0.seq`, so it reads the index in `seq` order and stops after one page. The JSON predicate
/// of each filter stays in the WHERE clause as a recheck: the index only narrows the candidates.
fn build_query(
    prefix: &str,
    tenant: &TenantId,
    query: &EventQuery,
) -> Result<QueryBuilder<Sqlite>, StoreError> {
    let data: Vec<(&JsonPath, &JsonScalar)> = query
        .filters
        .iter()
        .filter_map(|filter| match filter {
            Filter::Data(path, value) => Some((path, value)),
            Filter::Equals(..) => None,
        })
        .collect();
    let mut builder = if data.is_empty() {
        QueryBuilder::<Sqlite>::new(format!(
            "{prefix}SELECT {EVENT_COLUMNS} FROM events WHERE tenant = "
        ))
    } else {
        let columns: Vec<String> = EVENT_COLUMNS
            .split(',')
            .map(|column| format!("events.{}", column.trim()))
            .collect();
        let mut sql = format!("{prefix}SELECT {} FROM events", columns.join(", "));
        for i in 0..data.len() {
            sql.push_str(&format!(
                " JOIN event_data_index AS d{i} ON d{i}.tenant = events.tenant AND d{i}.seq = events.seq"
            ));
        }
        let mut builder = QueryBuilder::<Sqlite>::new(sql);
        builder.push(" WHERE ");
        for (i, (path, value)) in data.iter().enumerate() {
            builder.push(format!("d{i}.tenant = "));
            builder.push_bind(tenant.as_str().to_owned());
            builder.push(format!(" AND d{i}.path = "));
            builder.push_bind(index_path(path.segments()));
            builder.push(format!(" AND d{i}.value = "));
            push_index_value(&mut builder, IndexedValue::of_scalar(value));
            builder.push(" AND ");
        }
        builder.push("events.tenant = ");
        builder
    };
    builder.push_bind(tenant.as_str().to_owned());
    for filter in &query.filters {
        push_filter(&mut builder, filter)?;
    }
    if let Some(since) = query.since {
        builder
            .push(" AND occurred_at >= ")
            .push_bind(micros(since));
    }
    if let Some(until) = query.until {
        builder.push(" AND occurred_at < ").push_bind(micros(until));
    }
    // With `event_data` filters, `d0.seq` (equal to `events.seq`) is the column whose order the
    // index yields; naming it lets SQLite stop after one page instead of sorting every match.
    let seq = if data.is_empty() { "seq" } else { "d0.seq" };
    let (after, direction) = match query.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    if let Some(after_seq) = query.after {
        builder
            .push(format!(" AND {seq} {after} "))
            .push_bind(after_seq.0);
    }
    builder
        .push(format!(" ORDER BY {seq} {direction} LIMIT "))
        .push_bind(query.fetch_limit());
    Ok(builder)
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: decode_role(&row.try_get::<String, _>("role")?)?,
    })
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl SqliteStore {
    /// [`Store::append`], with the clock read once the write lock is held unless `clock` is
    /// given.
    async fn append_with(
        &self,
        batch: &[Submission],
        clock: Option<OffsetDateTime>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut heads = HashMap::new();
        for tenant in assemble::tenants(batch) {
            if let Some(head) = read_head(&mut tx, &tenant).await? {
                heads.insert(tenant, head);
            }
        }
        let mut known = KeyIndex::new();
        let by_key =
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = ? AND idempotency_key = ?");
        for (tenant, key) in assemble::idempotency_keys(batch) {
            let row = sqlx::query(sqlx::AssertSqlSafe(by_key.as_str()))
                .bind(tenant.as_str())
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                known.insert((tenant, key), event_from_row(&row)?);
            }
        }
        let clock = truncate_to_micros(clock.unwrap_or_else(OffsetDateTime::now_utc));
        let recorded_at = self.clock.commit_time(clock, &heads);
        let assembled = assemble::assemble(batch, known, heads, recorded_at);
        insert_events(&mut tx, &assembled.rows).await?;
        insert_index_rows(&mut tx, &assembled.rows).await?;
        insert_nodes(&mut tx, &assembled.nodes).await?;
        for (tenant, target) in &assembled.redactions {
            erase_payload(&mut tx, tenant, *target, recorded_at).await?;
        }
        for (tenant, head) in &assembled.heads {
            sqlx::query(
                "INSERT INTO chain_heads (tenant, seq, hash, frontier, recorded_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant) DO UPDATE \
                 SET seq = excluded.seq, hash = excluded.hash, frontier = excluded.frontier, \
                 recorded_at = excluded.recorded_at",
            )
            .bind(tenant.as_str())
            .bind(head.seq.0)
            .bind(head.hash.as_bytes())
            .bind(head.frontier.to_bytes())
            .bind(head.recorded_at.map(micros))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(assembled.outcomes)
    }
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let has_table: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(&self.readers)
        .await?;
        let applied: Vec<i64> = if has_table {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.readers)
                .await?
        } else {
            Vec::new()
        };
        Ok(pending_versions(&MIGRATOR, &applied))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.readers).await?;
        Ok(())
    }

    async fn append(&self, batch: &[Submission]) -> Result<Vec<Appended>, StoreError> {
        self.append_with(batch, None).await
    }

    async fn append_at(
        &self,
        batch: &[Submission],
        clock: OffsetDateTime,
    ) -> Result<Vec<Appended>, StoreError> {
        self.append_with(batch, Some(clock)).await
    }
    async fn get(&self, tenant: &TenantId, id: EventId) -> Result<Option<Event>, StoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = ? AND id = ?");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id.0)
            .fetch_optional(&self.readers)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn query(&self, tenant: &TenantId, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let mut builder = build_query("", tenant, query)?;
        let rows = builder.build().fetch_all(&self.readers).await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn explain(&self, tenant: &TenantId, query: &EventQuery) -> Result<String, StoreError> {
        let mut builder = build_query("EXPLAIN QUERY PLAN ", tenant, query)?;
        let rows = builder.build().fetch_all(&self.readers).await?;
        let lines: Vec<String> = rows
            .iter()
            .map(|row| row.try_get::<String, _>("detail"))
            .collect::<Result<_, _>>()?;
        Ok(lines.join("\n"))
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(after.0)
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(
            "WITH RECURSIVE logged(tenant) AS ( \
                 SELECT MIN(tenant) FROM events \
                 UNION ALL \
                 SELECT (SELECT MIN(tenant) FROM events WHERE tenant > logged.tenant) \
                 FROM logged WHERE logged.tenant IS NOT NULL) \
             SELECT tenant FROM logged WHERE tenant IS NOT NULL \
             UNION SELECT tenant FROM chain_heads UNION SELECT tenant FROM checkpoints ORDER BY 1",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(names.into_iter().map(TenantId::new).collect())
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<Chained>, StoreError> {
        let mut conn = self.readers.acquire().await?;
        read_head(&mut conn, tenant).await
    }

    async fn nodes(
        &self,
        tenant: &TenantId,
        ids: &[NodeId],
    ) -> Result<HashMap<NodeId, Digest>, StoreError> {
        let mut found = HashMap::new();
        let mut conn = self.readers.acquire().await?;
        for id in ids {
            let bytes: Option<Vec<u8>> = if id.level == 0 {
                sqlx::query_scalar("SELECT leaf_hash FROM events WHERE tenant = ? AND seq = ?")
                    .bind(tenant.as_str())
                    .bind(id.index as i64 + 1)
                    .fetch_optional(&mut *conn)
                    .await?
            } else {
                sqlx::query_scalar(
                    "SELECT hash FROM merkle_nodes WHERE tenant = ? AND level = ? AND idx = ?",
                )
                .bind(tenant.as_str())
                .bind(i64::from(id.level))
                .bind(id.index as i64)
                .fetch_optional(&mut *conn)
                .await?
            };
            if let Some(bytes) = bytes {
                found.insert(*id, decode_digest("merkle node", &bytes)?);
            }
        }
        Ok(found)
    }

    async fn add_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (tenant, tree_size, root_hash, issued_at, note) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, tree_size) DO NOTHING",
        )
        .bind(checkpoint.tenant.as_str())
        .bind(checkpoint.tree_size as i64)
        .bind(checkpoint.root.as_bytes())
        .bind(micros(checkpoint.issued_at))
        .bind(&checkpoint.note)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn checkpoint(
        &self,
        tenant: &TenantId,
        tree_size: Option<u64>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let row =
            match tree_size {
                Some(size) => {
                    sqlx::query("SELECT * FROM checkpoints WHERE tenant = ? AND tree_size = ?")
                        .bind(tenant.as_str())
                        .bind(size as i64)
                        .fetch_optional(&self.readers)
                        .await?
                }
                None => sqlx::query(
                    "SELECT * FROM checkpoints WHERE tenant = ? ORDER BY tree_size DESC LIMIT 1",
                )
                .bind(tenant.as_str())
                .fetch_optional(&self.readers)
                .await?,
            };
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn checkpoints(&self, tenant: &TenantId) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query("SELECT * FROM checkpoints WHERE tenant = ? ORDER BY tree_size")
            .bind(tenant.as_str())
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    async fn add_user(&self, user: &NewUser) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(micros(OffsetDateTime::now_utc()))
        .execute(&self.writer)
        .await;
        match result {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "a user named `{}` already exists",
                user.name
            ))),
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    async fn find_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query("SELECT name, password_hash, role FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.readers)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query("SELECT name, password_hash, role FROM users ORDER BY name")
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn count_users_with_role(&self, role: Role) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = ?")
                .bind(role.as_str())
                .fetch_one(&self.readers)
                .await?,
        )
    }

    /// Polls the counter of migration 0006 every [`USERS_POLL_INTERVAL`] on a reader
    /// connection.
    fn watch_users(&self, shutdown: tokio_util::sync::CancellationToken) -> super::UsersWatch {
        let readers = self.readers.clone();
        super::users_watch::poll(USERS_POLL_INTERVAL, shutdown, move || {
            let readers = readers.clone();
            async move {
                let generation: i64 =
                    sqlx::query_scalar("SELECT generation FROM users_generation WHERE id = 1")
                        .fetch_one(&readers)
                        .await?;
                Ok(generation)
            }
        })
    }
}

/// How often each server reads the users generation (migration 0006): a change by another
/// process (`auditor user remove`, another server on the file) reaches it within this.
///
/// SQLite cannot tell another process of a commit, so any way of noticing one is a read; what
/// matters is how often, and which. Measured (release build, 3 users, busy 2-core machine):
/// `find_user` per request, as before, 33–61 µs per read at thousands of requests per second;
/// reading this counter 33–36 µs, ten times a second; `PRAGMA data_version` on a dedicated
/// connection 13–28 µs, but it moves at every commit of any other connection, including the
/// writer's: under single-event appends it moved at 30 of 30 polls, the counter at none, so
/// every poll would have reloaded the users (another 60 µs) for nothing.
const USERS_POLL_INTERVAL: Duration = Duration::from_millis(100);
