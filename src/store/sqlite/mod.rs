//! The embedded backend: one SQLite file in WAL mode, through `rusqlite` on threads of its own.
//! Appends run on one writer thread that owns its connection, in `BEGIN IMMEDIATE` transactions;
//! reads run on a fixed set of reader threads with read-only connections and never wait for it.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, mpsc};

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{
    Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params, params_from_iter,
};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use super::assemble::{self, CommitClock, KeyIndex};
use super::{
    Appended, EVENT_COLUMNS, INSERT_EVENT_COLUMNS, Store, StoreError, corrupt, decode_digest,
    decode_frontier, decode_role, decode_tile, encode_tile,
};
use crate::integrity::tiles::{FullTile, TileId};
use crate::integrity::{Chained, Checkpoint, Digest};
use crate::model::event::truncate_to_micros;
use crate::model::payload;
use crate::model::user::{NewUser, Role, UserRecord};
use crate::model::{
    Action, Event, EventId, EventQuery, Field, Filter, JsonPath, JsonScalar, Order, Outcome, Seq,
    Submission, TenantId,
};

mod connections;
mod data_index;
mod migrations;

use connections::{Location, Threads};
use data_index::{IndexedValue, index_path, indexed_leaves, sqlite_json_path};

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Threads,
    readers: Threads,
    clock: Arc<CommitClock>,
    /// Dropped with the last clone of the store, which stops the background checkpointer.
    _stop_checkpointer: mpsc::Sender<()>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://path` URL, with one writer
    /// connection and `max_readers` reader connections, each on a thread of its own.
    pub async fn connect(url: &str, max_readers: u32) -> Result<Self, StoreError> {
        let location = Location::parse(url)?;
        let readers = max_readers.max(1) as usize;
        // The writer first: it creates the file and puts it in WAL mode.
        let (writer, readers, checkpointer) = tokio::task::spawn_blocking(move || {
            let writer = location.open_writer()?;
            let readers = (0..readers)
                .map(|_| location.open_reader())
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, StoreError>((writer, readers, location.open_checkpointer()?))
        })
        .await
        .map_err(|e| StoreError::Other(anyhow::Error::new(e).context("opening SQLite")))??;
        let (stop, stopped) = mpsc::channel();
        connections::spawn_checkpointer(checkpointer, stopped)?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Threads::start("writer", vec![writer])?,
                readers: Threads::start("reader", readers)?,
                clock: Arc::default(),
                _stop_checkpointer: stop,
            }),
        })
    }

    /// Runs `job` on the writer thread, the only one that writes.
    async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.inner.writer.run(job).await
    }

    /// Runs `job` on a reader thread.
    async fn read<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.inner.readers.run(move |conn| job(conn)).await
    }
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

fn from_micros(column: &str, micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| corrupt(column, e))
}

/// The columns of a row in the order they were selected, each read once by a typed accessor.
/// The event decoder below reads them in the order of [`EVENT_COLUMNS`].
struct Columns<'r, 's> {
    row: &'r Row<'s>,
    next: usize,
}

impl<'r> Columns<'r, '_> {
    fn new<'s>(row: &'r Row<'s>) -> Columns<'r, 's> {
        Columns { row, next: 0 }
    }

    /// The next column, which the caller expects to be `name`.
    fn next(&mut self, name: &str) -> Result<ValueRef<'r>, StoreError> {
        debug_assert_eq!(
            self.row.as_ref().column_name(self.next).ok(),
            Some(name),
            "columns decoded out of order"
        );
        let value = self.row.get_ref(self.next)?;
        self.next += 1;
        Ok(value)
    }

    fn integer(&mut self, name: &str) -> Result<i64, StoreError> {
        self.next(name)?.as_i64().map_err(|e| corrupt(name, e))
    }

    fn optional_integer(&mut self, name: &str) -> Result<Option<i64>, StoreError> {
        self.next(name)?
            .as_i64_or_null()
            .map_err(|e| corrupt(name, e))
    }

    fn optional_str(&mut self, name: &str) -> Result<Option<&'r str>, StoreError> {
        self.next(name)?
            .as_str_or_null()
            .map_err(|e| corrupt(name, e))
    }

    fn text(&mut self, name: &str) -> Result<String, StoreError> {
        Ok(self
            .next(name)?
            .as_str()
            .map_err(|e| corrupt(name, e))?
            .to_owned())
    }

    fn optional_text(&mut self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.optional_str(name)?.map(str::to_owned))
    }

    fn optional_blob(&mut self, name: &str) -> Result<Option<&'r [u8]>, StoreError> {
        self.next(name)?
            .as_blob_or_null()
            .map_err(|e| corrupt(name, e))
    }

    fn time(&mut self, name: &str) -> Result<OffsetDateTime, StoreError> {
        let micros = self.integer(name)?;
        from_micros(name, micros)
    }

    fn optional_time(&mut self, name: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.optional_integer(name)?
            .map(|t| from_micros(name, t))
            .transpose()
    }

    fn digest(&mut self, name: &str) -> Result<Digest, StoreError> {
        let bytes = self.optional_blob(name)?;
        decode_digest(name, bytes.ok_or_else(|| corrupt(name, "missing"))?)
    }

    fn optional_digest(&mut self, name: &str) -> Result<Option<Digest>, StoreError> {
        self.optional_blob(name)?
            .map(|b| decode_digest(name, b))
            .transpose()
    }

    fn optional_id(&mut self, name: &str) -> Result<Option<EventId>, StoreError> {
        self.optional_blob(name)?
            .map(|b| {
                Uuid::from_slice(b)
                    .map(EventId)
                    .map_err(|e| corrupt(name, e))
            })
            .transpose()
    }
}

/// An event from a row of [`EVENT_COLUMNS`]. `event_data` is parsed once, from the row's own
/// text, and brought to the form it had when it was recorded (`payload::normalized`).
fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    let mut c = Columns::new(row);
    Ok(Event {
        tenant: TenantId::new(c.text("tenant")?),
        seq: Seq(c.integer("seq")?),
        id: c
            .optional_id("id")?
            .ok_or_else(|| corrupt("id", "missing"))?,
        event_type: c.text("event_type")?,
        user_identity: c.text("user_identity")?,
        action: c
            .optional_str("action")?
            .map(|a| Action::parse(a).ok_or_else(|| corrupt("action", a)))
            .transpose()?,
        entity: c.optional_text("entity")?,
        entity_id: c.optional_text("entity_id")?,
        property: c.optional_text("property")?,
        source: c.optional_text("source")?,
        ip: c.optional_text("ip")?,
        outcome: c
            .optional_str("outcome")?
            .map(|o| Outcome::parse(o).ok_or_else(|| corrupt("outcome", o)))
            .transpose()?,
        occurred_at: c.time("occurred_at")?,
        recorded_at: c.time("recorded_at")?,
        recorded_by: c.text("recorded_by")?,
        event_data: c
            .optional_str("event_data")?
            .map(|text| serde_json::from_str::<Map<String, Value>>(text).map(payload::normalized))
            .transpose()
            .map_err(|e| corrupt("event_data", e))?,
        event_data_hash: c.optional_digest("event_data_hash")?,
        redacted_at: c.optional_time("redacted_at")?,
        idempotency_key: c.optional_text("idempotency_key")?,
        amends: c.optional_id("amends")?,
        amends_hash: c.optional_digest("amends_hash")?,
        request_hash: c.digest("request_hash")?,
        leaf_hash: c.digest("leaf_hash")?,
        prev_hash: c.digest("prev_hash")?,
        hash: c.digest("hash")?,
    })
}

/// Every event the statement's rows hold.
fn events_of(mut rows: rusqlite::Rows<'_>) -> Result<Vec<Event>, StoreError> {
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        events.push(event_from_row(row)?);
    }
    Ok(events)
}

/// The fixed event statements, written once from [`EVENT_COLUMNS`].
static SELECT_BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = ? AND id = ?"));
static SELECT_BY_KEY: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = ? AND idempotency_key = ?")
});
static SELECT_AFTER: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {EVENT_COLUMNS} FROM events WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT ?")
});
static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| {
    let placeholders = vec!["?"; INSERT_EVENT_COLUMNS.matches(',').count() + 1].join(", ");
    format!("{INSERT_EVENT_COLUMNS}VALUES ({placeholders})")
});

/// Inserts a batch's rows, one execution of one cached statement each: in-process, a row costs
/// a bind and a step, so there is nothing to save by packing rows into one statement.
fn insert_events(tx: &Transaction, events: &[Event]) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(&INSERT_EVENT)?;
    for event in events {
        let event_data = event
            .event_data
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Other(e.into()))?;
        insert.execute(params![
            event.tenant.as_str(),
            event.seq.0,
            event.id.0.as_bytes(),
            event.event_type,
            event.user_identity,
            event.action.map(Action::as_str),
            event.entity,
            event.entity_id,
            event.property,
            event.source,
            event.ip,
            event.outcome.map(Outcome::as_str),
            micros(event.occurred_at),
            micros(event.recorded_at),
            event.recorded_by,
            event_data,
            event.event_data_hash.as_ref().map(Digest::as_bytes),
            event.idempotency_key,
            event.amends.as_ref().map(|a| a.0.as_bytes()),
            event.amends_hash.as_ref().map(Digest::as_bytes),
            event.request_hash.as_bytes(),
            event.leaf_hash.as_bytes(),
            event.prev_hash.as_bytes(),
            event.hash.as_bytes(),
        ])?;
    }
    Ok(())
}

/// Inserts the `event_data_index` rows of a batch's payloads (see `data_index`).
fn insert_index_rows(tx: &Transaction, events: &[Event]) -> Result<(), StoreError> {
    // OR IGNORE: no two leaves of a payload share a path (`push_index_key` is unambiguous), but
    // derived data should never be the reason an append fails.
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO event_data_index (tenant, path, value, seq) VALUES (?, ?, ?, ?)",
    )?;
    let mut leaves = Vec::new();
    for event in events {
        let Some(data) = &event.event_data else {
            continue;
        };
        leaves.clear();
        indexed_leaves("", data, &mut leaves);
        for (path, value) in &leaves {
            insert.execute(params![event.tenant.as_str(), path, value, event.seq.0])?;
        }
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
fn erase_payload(
    tx: &Transaction,
    tenant: &TenantId,
    target: EventId,
    recorded_at: OffsetDateTime,
) -> Result<(), StoreError> {
    let found: Option<(i64, String)> = tx
        .prepare_cached(
            "SELECT seq, event_data FROM events \
             WHERE tenant = ? AND id = ? AND redacted_at IS NULL AND event_data IS NOT NULL",
        )?
        .query_row(params![tenant.as_str(), target.0.as_bytes()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let Some((seq, data)) = found else {
        return Ok(());
    };
    let data: Map<String, Value> =
        serde_json::from_str(&data).map_err(|e| corrupt("event_data", e))?;
    let mut leaves = Vec::new();
    indexed_leaves("", &data, &mut leaves);
    let mut delete = tx.prepare_cached(
        "DELETE FROM event_data_index WHERE tenant = ? AND path = ? AND value = ? AND seq = ?",
    )?;
    for (path, value) in &leaves {
        delete.execute(params![tenant.as_str(), path, value, seq])?;
    }
    tx.prepare_cached(
        "UPDATE events SET event_data = NULL, redacted_at = ? WHERE tenant = ? AND seq = ?",
    )?
    .execute(params![micros(recorded_at), tenant.as_str(), seq])?;
    Ok(())
}

fn insert_tiles(tx: &Transaction, tiles: &[(TenantId, FullTile)]) -> Result<(), StoreError> {
    let mut insert =
        tx.prepare_cached("INSERT INTO tiles (tenant, level, idx, hashes) VALUES (?, ?, ?, ?)")?;
    for (tenant, tile) in tiles {
        insert.execute(params![
            tenant.as_str(),
            i64::from(tile.id.level),
            tile.id.index as i64,
            encode_tile(&tile.hashes)
        ])?;
    }
    Ok(())
}

/// SQL text and its bound values, built together so that a value can only ever be bound.
#[derive(Default)]
struct Sql {
    text: String,
    binds: Vec<SqlValue>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: impl Into<SqlValue>) -> &mut Self {
        self.text.push('?');
        self.binds.push(value.into());
        self
    }
}

impl From<IndexedValue<'_>> for SqlValue {
    fn from(value: IndexedValue<'_>) -> Self {
        match value {
            IndexedValue::Integer(i) => Self::Integer(i),
            IndexedValue::Real(f) => Self::Real(f),
            IndexedValue::Text(t) => Self::Text(t.to_owned()),
            IndexedValue::Blob(b) => Self::Blob(b.to_vec()),
        }
    }
}

fn push_filter(sql: &mut Sql, filter: &Filter) -> Result<(), StoreError> {
    match filter {
        Filter::Equals(field @ (Field::Id | Field::Amends), value) => {
            let id = EventId::from_str(value).map_err(|e| StoreError::Other(e.into()))?;
            sql.push(&format!(" AND {} = ", field.name()))
                .bind(id.0.as_bytes().to_vec());
        }
        Filter::Equals(field, value) => {
            sql.push(&format!(" AND {} = ", field.name()))
                .bind(value.clone());
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
            sql.push(" AND json_type(event_data, ")
                .bind(path.clone())
                .push(json_type);
            let extract = |sql: &mut Sql| {
                sql.push(" AND json_extract(event_data, ")
                    .bind(path.clone())
                    .push(") = ");
            };
            match value {
                JsonScalar::Null | JsonScalar::Bool(_) => {}
                JsonScalar::Integer(i) => {
                    extract(sql);
                    sql.bind(*i);
                }
                // SQLite's own reading of a stored double is not always correctly rounded (an
                // exponent beyond ±100 can come out one unit off), so the number's stored text,
                // which is serde_json's shortest form like the query's, is compared as well.
                JsonScalar::Float(f) => {
                    sql.push(" AND (json_extract(event_data, ")
                        .bind(path.clone())
                        .push(") = ")
                        .bind(*f)
                        .push(" OR (event_data -> ")
                        .bind(path)
                        .push(") = ")
                        .bind(serde_json::to_string(f).unwrap_or_default())
                        .push(")");
                }
                JsonScalar::String(s) => {
                    extract(sql);
                    sql.bind(s.clone());
                }
            }
        }
    }
    Ok(())
}

/// The SQL of an event query (optionally prefixed, e.g. by `EXPLAIN`), with bound values only.
///
/// Without `event_data` filters this reads `events` alone. With them, each filter joins
/// `event_data_index` (as `d0`, `d1`, …) on `(tenant, path, value)`, and the query pages by
/// `d0.seq`, so it reads the index in `seq` order and stops after one page. The JSON predicate
/// of each filter stays in the WHERE clause as a recheck: the index only narrows the candidates.
fn build_query(prefix: &str, tenant: &TenantId, query: &EventQuery) -> Result<Sql, StoreError> {
    let data: Vec<(&JsonPath, &JsonScalar)> = query
        .filters
        .iter()
        .filter_map(|filter| match filter {
            Filter::Data(path, value) => Some((path, value)),
            Filter::Equals(..) => None,
        })
        .collect();
    let mut sql = Sql::default();
    if data.is_empty() {
        sql.push(&format!(
            "{prefix}SELECT {EVENT_COLUMNS} FROM events WHERE tenant = "
        ));
    } else {
        let columns: Vec<String> = EVENT_COLUMNS
            .split(',')
            .map(|column| format!("events.{}", column.trim()))
            .collect();
        sql.push(&format!(
            "{prefix}SELECT {} FROM events",
            columns.join(", ")
        ));
        for i in 0..data.len() {
            sql.push(&format!(
                " JOIN event_data_index AS d{i} ON d{i}.tenant = events.tenant AND d{i}.seq = events.seq"
            ));
        }
        sql.push(" WHERE ");
        for (i, (path, value)) in data.iter().enumerate() {
            sql.push(&format!("d{i}.tenant = "))
                .bind(tenant.as_str().to_owned())
                .push(&format!(" AND d{i}.path = "))
                .bind(index_path(path.segments()))
                .push(&format!(" AND d{i}.value = "))
                .bind(IndexedValue::of_scalar(value))
                .push(" AND ");
        }
        sql.push("events.tenant = ");
    }
    sql.bind(tenant.as_str().to_owned());
    for filter in &query.filters {
        push_filter(&mut sql, filter)?;
    }
    if let Some(since) = query.since {
        sql.push(" AND occurred_at >= ").bind(micros(since));
    }
    if let Some(until) = query.until {
        sql.push(" AND occurred_at < ").bind(micros(until));
    }
    // With `event_data` filters, `d0.seq` (equal to `events.seq`) is the column whose order the
    // index yields; naming it lets SQLite stop after one page instead of sorting every match.
    let seq = if data.is_empty() { "seq" } else { "d0.seq" };
    let (after, direction) = match query.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    if let Some(after_seq) = query.after {
        sql.push(&format!(" AND {seq} {after} ")).bind(after_seq.0);
    }
    sql.push(&format!(" ORDER BY {seq} {direction} LIMIT "))
        .bind(query.fetch_limit());
    Ok(sql)
}

fn read_head(conn: &Connection, tenant: &TenantId) -> Result<Option<Chained>, StoreError> {
    let mut select = conn.prepare_cached(
        "SELECT seq, hash, partial_tiles, recorded_at, recorded_at_ordered_from \
         FROM chain_heads WHERE tenant = ?",
    )?;
    let mut rows = select.query([tenant.as_str()])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut c = Columns::new(row);
    let seq = c.integer("seq")?;
    let hash = c.digest("hash")?;
    let partial_tiles = c.optional_blob("partial_tiles")?.unwrap_or_default();
    Ok(Some(Chained {
        seq: Seq(seq),
        hash,
        frontier: decode_frontier(seq, partial_tiles)?,
        recorded_at: c.optional_time("recorded_at")?,
        recorded_at_ordered_from: Seq(c.integer("recorded_at_ordered_from")?),
    }))
}

fn checkpoints_of(mut rows: rusqlite::Rows<'_>) -> Result<Vec<Checkpoint>, StoreError> {
    let mut checkpoints = Vec::new();
    while let Some(row) = rows.next()? {
        let mut c = Columns::new(row);
        checkpoints.push(Checkpoint {
            tenant: TenantId::new(c.text("tenant")?),
            tree_size: c.integer("tree_size")? as u64,
            root: c.digest("root_hash")?,
            issued_at: c.time("issued_at")?,
            note: c.text("note")?,
        });
    }
    Ok(checkpoints)
}

const CHECKPOINT_COLUMNS: &str = "tenant, tree_size, root_hash, issued_at, note";

fn users_of(mut rows: rusqlite::Rows<'_>) -> Result<Vec<UserRecord>, StoreError> {
    let mut users = Vec::new();
    while let Some(row) = rows.next()? {
        let mut c = Columns::new(row);
        users.push(UserRecord {
            name: c.text("name")?,
            password_hash: c.text("password_hash")?,
            role: decode_role(&c.text("role")?)?,
        });
    }
    Ok(users)
}

fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// [`Store::append`] on the writer's connection, with the clock read once the write lock is
/// held unless `clock` is given.
fn append(
    conn: &mut Connection,
    commit_clock: &CommitClock,
    batch: &[Submission],
    clock: Option<OffsetDateTime>,
) -> Result<Vec<Appended>, StoreError> {
    // IMMEDIATE takes the write lock up front: the heads read below cannot change until commit.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut heads = HashMap::new();
    for tenant in assemble::tenants(batch) {
        if let Some(head) = read_head(&tx, &tenant)? {
            heads.insert(tenant, head);
        }
    }
    let mut known = KeyIndex::new();
    {
        let mut by_key = tx.prepare_cached(&SELECT_BY_KEY)?;
        for (tenant, key) in assemble::idempotency_keys(batch) {
            let mut rows = by_key.query(params![tenant.as_str(), key])?;
            if let Some(row) = rows.next()? {
                let event = event_from_row(row)?;
                known.insert((tenant, key), event);
            }
        }
    }
    let clock = truncate_to_micros(clock.unwrap_or_else(OffsetDateTime::now_utc));
    let recorded_at = commit_clock.commit_time(clock, &heads);
    let assembled = assemble::assemble(batch, known, heads, recorded_at);
    insert_events(&tx, &assembled.rows)?;
    insert_index_rows(&tx, &assembled.rows)?;
    insert_tiles(&tx, &assembled.tiles)?;
    for (tenant, target) in &assembled.redactions {
        erase_payload(&tx, tenant, *target, recorded_at)?;
    }
    {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO chain_heads (tenant, seq, hash, partial_tiles, recorded_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant) DO UPDATE \
             SET seq = excluded.seq, hash = excluded.hash, \
             partial_tiles = excluded.partial_tiles, recorded_at = excluded.recorded_at",
        )?;
        for (tenant, head) in &assembled.heads {
            upsert.execute(params![
                tenant.as_str(),
                head.seq.0,
                head.hash.as_bytes(),
                head.frontier.to_bytes(),
                head.recorded_at.map(micros),
            ])?;
        }
    }
    tx.commit()?;
    Ok(assembled.outcomes)
}

impl SqliteStore {
    /// [`Store::append`] on the writer thread. The batch is copied to it: the thread cannot
    /// borrow from a future that may be dropped while it works.
    async fn append_with(
        &self,
        batch: &[Submission],
        clock: Option<OffsetDateTime>,
    ) -> Result<Vec<Appended>, StoreError> {
        let batch = batch.to_vec();
        let commit_clock = Arc::clone(&self.inner.clock);
        self.write(move |conn| append(conn, &commit_clock, &batch, clock))
            .await
    }
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.write(migrations::migrate).await
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        self.read(migrations::pending).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if !self.inner.writer.is_running() {
            return Err(StoreError::Unavailable(
                "the SQLite writer thread has stopped".into(),
            ));
        }
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
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
        let tenant = tenant.clone();
        self.read(move |conn| {
            let mut select = conn.prepare_cached(&SELECT_BY_ID)?;
            let mut rows = select.query(params![tenant.as_str(), id.0.as_bytes()])?;
            rows.next()?.map(event_from_row).transpose()
        })
        .await
    }

    async fn query(&self, tenant: &TenantId, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let sql = build_query("", tenant, query)?;
        self.read(move |conn| {
            let mut select = conn.prepare_cached(&sql.text)?;
            events_of(select.query(params_from_iter(&sql.binds))?)
        })
        .await
    }

    async fn explain(&self, tenant: &TenantId, query: &EventQuery) -> Result<String, StoreError> {
        let sql = build_query("EXPLAIN QUERY PLAN ", tenant, query)?;
        self.read(move |conn| {
            let mut explain = conn.prepare(&sql.text)?;
            let lines = explain
                .query_map(params_from_iter(&sql.binds), |row| {
                    row.get::<_, String>("detail")
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(lines.join("\n"))
        })
        .await
    }

    async fn scan(
        &self,
        tenant: &TenantId,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| {
            let mut select = conn.prepare_cached(&SELECT_AFTER)?;
            events_of(select.query(params![tenant.as_str(), after.0, i64::from(limit)])?)
        })
        .await
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        self.read(|conn| {
            let mut select = conn.prepare_cached(
                "WITH RECURSIVE logged(tenant) AS ( \
                     SELECT MIN(tenant) FROM events \
                     UNION ALL \
                     SELECT (SELECT MIN(tenant) FROM events WHERE tenant > logged.tenant) \
                     FROM logged WHERE logged.tenant IS NOT NULL) \
                 SELECT tenant FROM logged WHERE tenant IS NOT NULL \
                 UNION SELECT tenant FROM chain_heads UNION SELECT tenant FROM checkpoints \
                 ORDER BY 1",
            )?;
            let names = select
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(names.into_iter().map(TenantId::new).collect())
        })
        .await
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<Chained>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| read_head(conn, &tenant)).await
    }

    async fn full_tiles(
        &self,
        tenant: &TenantId,
        ids: &[TileId],
    ) -> Result<HashMap<TileId, Vec<Digest>>, StoreError> {
        let tenant = tenant.clone();
        let ids = ids.to_vec();
        self.read(move |conn| {
            let mut select = conn.prepare_cached(
                "SELECT hashes FROM tiles WHERE tenant = ? AND level = ? AND idx = ?",
            )?;
            let mut found = HashMap::new();
            for id in ids {
                let mut rows = select.query(params![
                    tenant.as_str(),
                    i64::from(id.level),
                    id.index as i64
                ])?;
                if let Some(row) = rows.next()? {
                    let bytes = row
                        .get_ref(0)?
                        .as_blob()
                        .map_err(|e| corrupt("tiles.hashes", e))?;
                    found.insert(id, decode_tile(bytes)?);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn add_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let checkpoint = checkpoint.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO checkpoints (tenant, tree_size, root_hash, issued_at, note) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, tree_size) DO NOTHING",
            )?
            .execute(params![
                checkpoint.tenant.as_str(),
                checkpoint.tree_size as i64,
                checkpoint.root.as_bytes(),
                micros(checkpoint.issued_at),
                checkpoint.note,
            ])?;
            Ok(())
        })
        .await
    }

    async fn checkpoint(
        &self,
        tenant: &TenantId,
        tree_size: Option<u64>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| {
            let found = match tree_size {
                Some(size) => {
                    let mut select = conn.prepare_cached(&format!(
                        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints \
                         WHERE tenant = ? AND tree_size = ?"
                    ))?;
                    checkpoints_of(select.query(params![tenant.as_str(), size as i64])?)?
                }
                None => {
                    let mut select = conn.prepare_cached(&format!(
                        "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints \
                         WHERE tenant = ? ORDER BY tree_size DESC LIMIT 1"
                    ))?;
                    checkpoints_of(select.query([tenant.as_str()])?)?
                }
            };
            Ok(found.into_iter().next())
        })
        .await
    }

    async fn checkpoints(&self, tenant: &TenantId) -> Result<Vec<Checkpoint>, StoreError> {
        let tenant = tenant.clone();
        self.read(move |conn| {
            let mut select = conn.prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE tenant = ? ORDER BY tree_size"
            ))?;
            checkpoints_of(select.query([tenant.as_str()])?)
        })
        .await
    }

    async fn add_user(&self, user: &NewUser) -> Result<(), StoreError> {
        let user = user.clone();
        self.write(move |conn| {
            let added = conn
                .prepare_cached(
                    "INSERT INTO users (name, password_hash, role, created_at) \
                     VALUES (?, ?, ?, ?)",
                )?
                .execute(params![
                    user.name,
                    user.password_hash,
                    user.role.as_str(),
                    micros(OffsetDateTime::now_utc()),
                ]);
            match added {
                Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                    "a user named `{}` already exists",
                    user.name
                ))),
                other => other.map(drop).map_err(StoreError::from),
            }
        })
        .await
    }

    async fn find_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            let mut select =
                conn.prepare_cached("SELECT name, password_hash, role FROM users WHERE name = ?")?;
            Ok(users_of(select.query([name])?)?.into_iter().next())
        })
        .await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.read(|conn| {
            let mut select =
                conn.prepare_cached("SELECT name, password_hash, role FROM users ORDER BY name")?;
            users_of(select.query([])?)
        })
        .await
    }

    async fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let removed = conn
                .prepare_cached("DELETE FROM users WHERE name = ?")?
                .execute([name])?;
            if removed == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
        .await
    }

    async fn count_users_with_role(&self, role: Role) -> Result<i64, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT COUNT(*) FROM users WHERE role = ?")?
                .query_row([role.as_str()], |row| row.get(0))?)
        })
        .await
    }

    /// Polls the counter of migration 0006 every [`USERS_POLL_INTERVAL`] on a reader
    /// connection.
    fn watch_users(&self, shutdown: tokio_util::sync::CancellationToken) -> super::UsersWatch {
        let store = self.clone();
        super::users_watch::poll(USERS_POLL_INTERVAL, shutdown, move || {
            let store = store.clone();
            async move {
                store
                    .read(|conn| {
                        Ok(conn
                            .prepare_cached("SELECT generation FROM users_generation WHERE id = 1")?
                            .query_row([], |row| row.get::<_, i64>(0))?)
                    })
                    .await
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
const USERS_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
