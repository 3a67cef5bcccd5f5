//! The embedded backend: one SQLite file in WAL mode, through `rusqlite` on threads of its own.
//! Appends run on one writer thread that owns its connection, in `BEGIN IMMEDIATE` transactions;
//! reads run on a fixed set of reader threads with read-only connections and never wait for it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, RwLock, mpsc};

use rusqlite::types::{ToSql, ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, Row, Transaction, TransactionBehavior, params, params_from_iter};
use time::OffsetDateTime;
use uuid::Uuid;

use super::assemble::{self, CommitClock, KeyIndex};
use super::rows::{self, CHECKPOINT_COLUMNS, EVENT_COLUMNS, ReadRow, SELECT_HEAD};
use super::{Appended, Connections, Store, StoreError, corrupt, decode_tile, encode_tile, users};
use crate::integrity::tiles::{FullTile, TileId};
use crate::integrity::{Chained, Checkpoint, Digest};
use crate::model::event::truncate_to_micros;
use crate::model::fields::{Cell, Flag, Kind};
use crate::model::session::SessionRecord;
use crate::model::token::{NewToken, TokenRecord};
use crate::model::user::{NewUser, Role, UserRecord};
use crate::model::{
    Event, EventId, EventQuery, FIELDS, Filter, JsonScalar, Order, Seq, Submission, TenantId,
};

mod connections;
mod data_index;
mod lists;
mod migrations;
mod postings;
mod runs;
mod sessions;
mod tokens;

use connections::{Location, Threads};
use data_index::sqlite_json_path;
use postings::{BatchPostings, PostingKey, Tail, posting_of};
pub use runs::PostingOptions;

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Threads,
    readers: Threads,
    clock: Arc<CommitClock>,
    /// The postings of the events after the last flush (see `postings`).
    tail: Arc<RwLock<Tail>>,
    postings: PostingOptions,
    /// Set while a task runs the postings' upkeep, so that there is one at a time.
    maintaining: AtomicBool,
    /// Dropped with the last clone of the store, which stops the background checkpointer.
    _stop_checkpointer: mpsc::Sender<()>,
}

/// Reader threads for a `max_readers` bound. A read is CPU work once its pages are in the OS
/// cache, so threads beyond the cores only take turns: at 16 clients on two cores, 16 readers
/// answered a user's page at p99 17 ms and 2 readers at 10 ms, with 30 % more pages a second.
fn reader_count(max_readers: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    cores.max(2).min(max_readers.max(1) as usize)
}

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://path` URL, with one writer
    /// connection and reader connections, each on a thread of its own: as many readers as the
    /// machine has cores (at least two), and never more than `max_readers`.
    pub async fn connect(url: &str, max_readers: u32) -> Result<Self, StoreError> {
        Self::connect_with(url, max_readers, PostingOptions::default()).await
    }

    /// [`SqliteStore::connect`] with postings batched and merged as `postings` says.
    pub async fn connect_with(
        url: &str,
        max_readers: u32,
        postings: PostingOptions,
    ) -> Result<Self, StoreError> {
        let location = Location::parse(url)?;
        let readers = reader_count(max_readers);
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
                tail: Arc::default(),
                postings,
                maintaining: AtomicBool::new(false),
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

    /// Loads the tail if this process has not yet (a job on the writer thread).
    async fn tail_loaded(&self) -> Result<(), StoreError> {
        if runs::read(&self.inner.tail).loaded {
            return Ok(());
        }
        let tail = Arc::clone(&self.inner.tail);
        self.write(move |conn| runs::load_tail(conn, &tail)).await
    }

    /// Runs the postings' upkeep (flushes and merges, see `runs`) in the background, one step
    /// per writer job so that appends queue between them, unless it is already running. After
    /// a step of a merge it waits as long as the step took, so that merges take at most half
    /// of the writer's time: after a load of 10M events, merging at full speed while queries
    /// ran made them several times slower (README "Round two so far").
    fn maintain_postings(&self) {
        if self.inner.maintaining.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let tail = Arc::clone(&store.inner.tail);
                let options = store.inner.postings;
                match store
                    .write(move |conn| runs::maintain(conn, &tail, &options))
                    .await
                {
                    Ok(Some(step)) => {
                        if step.deferrable {
                            tokio::time::sleep(step.elapsed).await;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "postings upkeep failed; retried later"),
                }
                break;
            }
            store.inner.maintaining.store(false, Ordering::Release);
        });
    }

    /// Flushes every tenant's tail as a run, then runs the postings' upkeep to its end (every
    /// merge due done, every retired run deleted). For tests, and for an operator who wants
    /// the database to hold everything before copying it.
    pub async fn flush_postings(&self) -> Result<(), StoreError> {
        let tail = Arc::clone(&self.inner.tail);
        let options = self.inner.postings;
        self.write(move |conn| runs::flush_all(conn, &tail, &options))
            .await
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

/// The columns of a row in the order they were selected, each read once.
struct Columns<'r, 's> {
    row: &'r Row<'s>,
    next: usize,
}

impl<'r> Columns<'r, '_> {
    fn new<'s>(row: &'r Row<'s>) -> Columns<'r, 's> {
        Columns { row, next: 0 }
    }
}

impl<'r> ReadRow<'r> for Columns<'r, '_> {
    fn cell(&mut self, name: &'static str, kind: Kind) -> Result<Option<Cell<'r>>, StoreError> {
        debug_assert_eq!(
            self.row.as_ref().column_name(self.next).ok(),
            Some(name),
            "columns decoded out of order"
        );
        let value = self.row.get_ref(self.next)?;
        self.next += 1;
        if value == ValueRef::Null {
            return Ok(None);
        }
        let invalid = |e: rusqlite::types::FromSqlError| corrupt(name, e);
        Ok(Some(match kind {
            Kind::Text => Cell::Text(Cow::Borrowed(value.as_str().map_err(invalid)?)),
            Kind::Integer => Cell::Integer(value.as_i64().map_err(invalid)?),
            Kind::Uuid => Cell::Uuid(
                Uuid::from_slice(value.as_blob().map_err(invalid)?)
                    .map_err(|e| corrupt(name, e))?,
            ),
            Kind::Time => Cell::Time(from_micros(name, value.as_i64().map_err(invalid)?)?),
            // Parsed once, from the row's own text.
            Kind::Json => Cell::Json(Cow::Owned(
                serde_json::from_str(value.as_str().map_err(invalid)?)
                    .map_err(|e| corrupt(name, e))?,
            )),
            Kind::Bytes => Cell::Bytes(Cow::Borrowed(value.as_blob().map_err(invalid)?)),
        }))
    }
}

/// A declared field's value as SQLite stores it (see `Kind`).
impl ToSql for Cell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Cell::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            Cell::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Cell::Uuid(id) => ToSqlOutput::Borrowed(ValueRef::Blob(id.as_bytes())),
            Cell::Time(t) => ToSqlOutput::Owned(SqlValue::Integer(micros(*t))),
            Cell::Json(map) => ToSqlOutput::Owned(SqlValue::Text(
                serde_json::to_string(map)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?,
            )),
            Cell::Bytes(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
        })
    }
}

fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    rows::event(&mut Columns::new(row))
}

/// Every row of a statement's result, decoded by one of `store::rows`' decoders.
fn decode_all<T>(
    mut result: rusqlite::Rows<'_>,
    decode: impl for<'r, 's> Fn(&mut Columns<'r, 's>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut decoded = Vec::new();
    while let Some(row) = result.next()? {
        decoded.push(decode(&mut Columns::new(row))?);
    }
    Ok(decoded)
}

fn events_of(result: rusqlite::Rows<'_>) -> Result<Vec<Event>, StoreError> {
    decode_all(result, |row| rows::event(row))
}

/// The fixed event statements, written once from [`EVENT_COLUMNS`].
static SELECT_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM events WHERE tenant = ? AND id = ?",
        *EVENT_COLUMNS
    )
});
static SELECT_BY_KEY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM events WHERE tenant = ? AND idempotency_key = ?",
        *EVENT_COLUMNS
    )
});
/// The largest `seq` an event's `key` holds: its low 40 bits (migration 0017).
const MAX_SEQ: i64 = (1 << 40) - 1;

/// SQL for the `key` of a tenant's event (migration 0017), from the parameters holding the
/// tenant and the `seq` (e.g. `"?1"`, `"?2"`): the tenant's number in the high bits, `seq` in
/// the low 40. NULL for a tenant that has no number yet, which no row matches.
fn key_of(tenant: &str, seq: &str) -> String {
    format!("(((SELECT number FROM tenant_numbers WHERE tenant = {tenant}) << 40) | {seq})")
}

/// Up to `limit` events of a tenant (`?1`) after a `seq` (`?2`), in order: one range of the
/// table's own B-tree. The limit is written into the statement, not bound: SQLite prepares a
/// statement whose `LIMIT` is a parameter again at every execution.
fn select_after(limit: u32) -> String {
    format!(
        "SELECT {} FROM events WHERE key > {} AND key <= {} ORDER BY key LIMIT {limit}",
        *EVENT_COLUMNS,
        key_of("?1", "?2"),
        key_of("?1", &MAX_SEQ.to_string())
    )
}
static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=FIELDS.len()).map(|at| format!("?{at}")).collect();
    let parameter = |name: &str| {
        let at = FIELDS.iter().position(|field| field.name == name);
        format!("?{}", at.expect("a declared field") + 1)
    };
    format!(
        "INSERT INTO events (key, {}) VALUES ({}, {})",
        *EVENT_COLUMNS,
        key_of(&parameter("tenant"), &parameter("seq")),
        placeholders.join(", ")
    )
});

/// Gives `tenant` the next number (migration 0017) unless it has one, before its first events
/// are inserted.
fn number_tenant(tx: &Transaction, tenant: &TenantId) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO tenant_numbers (tenant, number) \
         SELECT ?1, (SELECT coalesce(max(number), 0) + 1 FROM tenant_numbers) \
         WHERE NOT EXISTS (SELECT 1 FROM tenant_numbers WHERE tenant = ?1)",
    )?
    .execute([tenant.as_str()])?;
    Ok(())
}

/// Inserts a batch's rows, one execution of one cached statement each: in-process, a row costs
/// a bind and a step, so there is nothing to save by packing rows into one statement.
fn insert_events(tx: &Transaction, events: &[Event]) -> Result<(), StoreError> {
    let mut insert = tx.prepare_cached(&INSERT_EVENT)?;
    for event in events {
        insert.execute(params_from_iter(event.columns()))?;
    }
    Ok(())
}

/// The UPDATE that writes an erased event over its row: every `Erasable` column, by position
/// (`?1`…), then the tenant and `seq` that locate it.
static ERASE_EVENT: LazyLock<(String, Vec<usize>)> = LazyLock::new(|| {
    let columns: Vec<usize> = (0..FIELDS.len())
        .filter(|&i| FIELDS[i].is(Flag::Erasable))
        .collect();
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(at, &i)| format!("{} = ?{}", FIELDS[i].name, at + 1))
        .collect();
    let sql = format!(
        "UPDATE events SET {} WHERE key = {}",
        sets.join(", "),
        key_of(
            &format!("?{}", columns.len() + 1),
            &format!("?{}", columns.len() + 2)
        )
    );
    (sql, columns)
});

/// Writes erased events over their rows and, in the same transaction, deletes the postings of
/// the values they lost from the runs that hold them, so that an erased value cannot be found
/// again. Returns each event's `seq` and those postings, for the caller to forget in the tail
/// once committed.
fn erase_events(
    tx: &Transaction,
    erasures: &[(Event, Event)],
) -> Result<Vec<(TenantId, Seq, Vec<PostingKey>)>, StoreError> {
    let (sql, columns) = &*ERASE_EVENT;
    let mut update = tx.prepare_cached(sql)?;
    let mut forgotten = Vec::new();
    for (before, after) in erasures {
        let cells = after.columns();
        let mut values: Vec<&dyn ToSql> =
            columns.iter().map(|&i| &cells[i] as &dyn ToSql).collect();
        let tenant = after.tenant.as_str();
        values.push(&tenant);
        values.push(&after.seq.0);
        update.execute(values.as_slice())?;
        let kept = postings::postings_of(after);
        let gone: Vec<PostingKey> = postings::postings_of(before)
            .into_iter()
            .filter(|key| !kept.contains(key))
            .collect();
        runs::erase(tx, &after.tenant, after.seq, &gone)?;
        forgotten.push((after.tenant.clone(), after.seq, gone));
    }
    Ok(forgotten)
}

/// A tenant's (`?1`) events from `seq` ?2 to ?3, both included.
static SELECT_RANGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM events WHERE key BETWEEN {} AND {} ORDER BY key",
        *EVENT_COLUMNS,
        key_of("?1", "?2"),
        key_of("?1", "?3")
    )
});

/// The stored events each erasure of the batch names, read in the append's transaction.
fn erasure_targets(
    tx: &Transaction,
    tail: &RwLock<Tail>,
    batch: &[Submission],
) -> Result<assemble::Targets, StoreError> {
    let mut found = assemble::Targets::new();
    for (tenant, targets) in assemble::erasure_targets(batch) {
        let filter = match assemble::TargetLookup::of(&targets) {
            assemble::TargetLookup::Filter(filter) => filter,
            assemble::TargetLookup::Range(first, last) => {
                let events = tx
                    .prepare_cached(&SELECT_RANGE)?
                    .query(params![tenant.as_str(), first.0, last.0])
                    .map_err(StoreError::from)
                    .and_then(events_of)?;
                found.insert((tenant, targets), events);
                continue;
            }
        };
        let query = EventQuery {
            filters: vec![filter],
            limit: u32::MAX - 1,
            ..EventQuery::default()
        };
        let events = match posting_keys(&query) {
            Some(keys) => runs::query(tx, tail, &tenant, &query, keys)?,
            None => {
                let sql = build_query("", &tenant, &query)?;
                let mut select = tx.prepare_cached(&sql.text)?;
                events_of(select.query(params_from_iter(&sql.binds))?)?
            }
        };
        found.insert((tenant, targets), events);
    }
    Ok(found)
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

    /// Binds the `key` of `tenant`'s event `seq` (see [`key_of`]).
    fn bind_key(&mut self, tenant: &TenantId, seq: i64) -> &mut Self {
        self.text.push_str(&key_of("?", "?"));
        self.binds.push(tenant.as_str().to_owned().into());
        self.binds.push(seq.into());
        self
    }
}

fn push_filter(sql: &mut Sql, filter: &Filter) -> Result<(), StoreError> {
    match filter {
        // Stored as 16-byte blobs; the parser checked the text is a UUID.
        Filter::Equals(field, value) if field.kind() == Kind::Uuid => {
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

/// The SQL of an event query that postings do not serve (optionally prefixed, e.g. by
/// `EXPLAIN`), with bound values only: no equality filter, or one on `id`, `idempotency_key`
/// or `amends`, whose own indexes on `events` find the few rows the other filters are then
/// tested on.
/// Appends a query's filters and time range to a statement reading `events`, as `AND` terms.
fn push_conditions(sql: &mut Sql, query: &EventQuery) -> Result<(), StoreError> {
    for filter in &query.filters {
        push_filter(sql, filter)?;
    }
    if let Some(since) = query.since {
        sql.push(" AND occurred_at >= ").bind(micros(since));
    }
    if let Some(until) = query.until {
        sql.push(" AND occurred_at < ").bind(micros(until));
    }
    Ok(())
}

fn build_query(prefix: &str, tenant: &TenantId, query: &EventQuery) -> Result<Sql, StoreError> {
    let mut sql = Sql::default();
    let (after, direction) = match query.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    sql.push(&format!(
        "{prefix}SELECT {} FROM events WHERE ",
        *EVENT_COLUMNS
    ));
    // A time range is read through `events_occurred_at`, which is not in `seq` order: the page
    // is then chosen by `key` alone in a subquery, which that index covers, and its rows read
    // afterwards, so the sort holds keys rather than whole rows (about 40 % less time for a
    // page of 100). `+key` keeps the cursor from being read as a range of the table instead.
    // Without one, the tenant's range of the table is read in order from the cursor on.
    let by_key_first = query.since.is_some() || query.until.is_some();
    let key = if by_key_first {
        sql.push("key IN (SELECT key FROM events WHERE ");
        "+key"
    } else {
        sql.push("key BETWEEN ")
            .bind_key(tenant, 0)
            .push(" AND ")
            .bind_key(tenant, MAX_SEQ)
            .push(" AND ");
        "key"
    };
    sql.push("tenant = ").bind(tenant.as_str().to_owned());
    push_conditions(&mut sql, query)?;
    if let Some(after_seq) = query.after {
        sql.push(&format!(" AND {key} {after} "))
            .bind_key(tenant, after_seq.0);
    }
    // Written, not bound: see `select_after`.
    sql.push(&format!(
        " ORDER BY key {direction} LIMIT {}",
        query.fetch_limit()
    ));
    if by_key_first {
        sql.push(&format!(") ORDER BY key {direction}"));
    }
    Ok(sql)
}

/// The postings a query's filters are found by, or `None` if the query is one for
/// [`build_query`]: none of its filters is posted, or one has an index of its own.
fn posting_keys(query: &EventQuery) -> Option<Vec<PostingKey>> {
    let keys: Option<Vec<PostingKey>> = query.filters.iter().map(posting_of).collect();
    keys.filter(|keys| !keys.is_empty())
}

fn read_head(conn: &Connection, tenant: &TenantId) -> Result<Option<Chained>, StoreError> {
    let mut select = conn.prepare_cached(SELECT_HEAD)?;
    let heads = decode_all(select.query([tenant.as_str()])?, |row| rows::head(row))?;
    Ok(heads.into_iter().next())
}

fn checkpoints_of(result: rusqlite::Rows<'_>) -> Result<Vec<Checkpoint>, StoreError> {
    decode_all(result, |row| rows::checkpoint(row))
}

fn users_of(result: rusqlite::Rows<'_>) -> Result<Vec<UserRecord>, StoreError> {
    decode_all(result, |row| rows::user(row))
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
    tail: &RwLock<Tail>,
    batch: Vec<Submission>,
    clock: Option<OffsetDateTime>,
) -> Result<Vec<Appended>, StoreError> {
    runs::load_tail(conn, tail)?;
    let erasing = batch
        .iter()
        .any(|submission| submission.events.iter().any(|e| e.erases.is_some()));
    // What the erasure frees is zeroed (`secure_delete`, on for the writer's connection); its
    // old page images leave the WAL too.
    let appended = append_in_transaction(conn, commit_clock, tail, batch, clock);
    if erasing && appended.is_ok() {
        truncate_wal(conn);
    }
    appended
}

/// Copies the WAL into the database and empties it, so that the erased values' old page images
/// leave the WAL file too. The busy handler waits for readers, but not for another checkpoint:
/// one the background checkpointer is running makes SQLite answer "busy" at once, so that is
/// tried again for up to a second. A reader still using an older snapshot after that keeps the
/// WAL from being emptied: then the next checkpoint that completes does it.
fn truncate_wal(conn: &Connection) {
    const TRIES: u32 = 50;
    for tried in 1..=TRIES {
        let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        });
        match result {
            Ok(0) => return,
            Ok(_) if tried < TRIES => std::thread::sleep(std::time::Duration::from_millis(20)),
            Ok(_) => tracing::warn!(
                "the WAL could not be emptied after an erasure (a reader holds an older \
                 snapshot); the erased values stay in the WAL file until a later checkpoint \
                 empties it"
            ),
            Err(error) => {
                tracing::warn!(%error, "checkpointing the WAL after an erasure failed");
                return;
            }
        }
    }
}

fn append_in_transaction(
    conn: &mut Connection,
    commit_clock: &CommitClock,
    tail: &RwLock<Tail>,
    batch: Vec<Submission>,
    clock: Option<OffsetDateTime>,
) -> Result<Vec<Appended>, StoreError> {
    // IMMEDIATE takes the write lock up front: the heads read below cannot change until commit.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut heads = HashMap::new();
    for tenant in assemble::tenants(&batch) {
        match read_head(&tx, &tenant)? {
            Some(head) => {
                heads.insert(tenant, head);
            }
            // Its first append: a tenant with a head has a number (migration 0017 numbered
            // every head, and a head is first written with the tenant's numbered events).
            None => number_tenant(&tx, &tenant)?,
        }
    }
    let mut known = KeyIndex::new();
    {
        let mut by_key = tx.prepare_cached(&SELECT_BY_KEY)?;
        for (tenant, key) in assemble::idempotency_keys(&batch) {
            let mut rows = by_key.query(params![tenant.as_str(), key])?;
            if let Some(row) = rows.next()? {
                let event = event_from_row(row)?;
                known.insert((tenant, key), event);
            }
        }
    }
    let clock = truncate_to_micros(clock.unwrap_or_else(OffsetDateTime::now_utc));
    let recorded_at = commit_clock.commit_time(clock, &heads);
    let targets = erasure_targets(&tx, tail, &batch)?;
    let assembled = assemble::assemble(batch, known, &targets, heads, recorded_at)
        .map_err(|e| StoreError::Other(e.into()))?;
    let rows = &assembled.rows;
    let (erased, postings) = std::thread::scope(|scope| {
        // A large batch's postings are gathered on another core while this one writes it.
        let gathering = (rows.len() >= POSTINGS_GATHERED_APART)
            .then(|| {
                std::thread::Builder::new()
                    .name("sqlite-postings".into())
                    .spawn_scoped(scope, || BatchPostings::of(rows))
            })
            .transpose()
            .map_err(|e| StoreError::Other(e.into()))?;
        let erased = write_assembled(tx, &assembled)?;
        let postings = match gathering {
            Some(gathering) => gathering
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => BatchPostings::of(rows),
        };
        Ok::<_, StoreError>((erased, postings))
    })?;
    let mut tail = runs::write(tail);
    tail.add_batch(postings);
    for (tenant, seq, keys) in &erased {
        tail.remove(tenant, *seq, keys);
    }
    Ok(assembled.outcomes)
}

/// Rows of a batch from which their postings are gathered on a thread of their own: below,
/// starting the thread would cost more than it saves.
const POSTINGS_GATHERED_APART: usize = 256;

/// Writes an assembled batch and commits it; returns the postings its erasures removed.
fn write_assembled(
    tx: rusqlite::Transaction<'_>,
    assembled: &assemble::Assembled,
) -> Result<Vec<(TenantId, Seq, Vec<PostingKey>)>, StoreError> {
    insert_events(&tx, &assembled.rows)?;
    insert_tiles(&tx, &assembled.tiles)?;
    let erased = erase_events(&tx, &assembled.erasures)?;
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
    Ok(erased)
}

impl Store for SqliteStore {
    /// Applies the pending migrations. The tail is read again afterwards: a migration may have
    /// moved postings into runs (0009).
    async fn migrate(&self) -> Result<(), StoreError> {
        let tail = Arc::clone(&self.inner.tail);
        self.write(move |conn| {
            migrations::migrate(conn)?;
            *runs::write(&tail) = Tail::default();
            Ok(())
        })
        .await
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        self.read(migrations::pending).await
    }

    /// Loads the postings' tail and resumes their upkeep (a merge a restart interrupted).
    async fn maintain(&self) -> Result<(), StoreError> {
        self.tail_loaded().await?;
        self.maintain_postings();
        Ok(())
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

    /// [`Store::append`] on the writer thread. The batch is copied to it: the thread cannot
    /// borrow from a future that may be dropped while it works.
    async fn append_with(
        &self,
        batch: &[Submission],
        clock: Option<OffsetDateTime>,
    ) -> Result<Vec<Appended>, StoreError> {
        let batch = batch.to_vec();
        let commit_clock = Arc::clone(&self.inner.clock);
        let tail = Arc::clone(&self.inner.tail);
        let appended = self
            .write(move |conn| append(conn, &commit_clock, &tail, batch, clock))
            .await?;
        if runs::read(&self.inner.tail).unfrozen() >= self.inner.postings.run_events {
            self.maintain_postings();
        }
        Ok(appended)
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
        if let Some(keys) = posting_keys(query) {
            self.tail_loaded().await?;
            let (tail, tenant, query) =
                (Arc::clone(&self.inner.tail), tenant.clone(), query.clone());
            return self
                .read(move |conn| runs::query(conn, &tail, &tenant, &query, keys))
                .await;
        }
        let sql = build_query("", tenant, query)?;
        self.read(move |conn| {
            let mut select = conn.prepare_cached(&sql.text)?;
            events_of(select.query(params_from_iter(&sql.binds))?)
        })
        .await
    }

    /// The plans of a query's statements: for one that postings serve, the read of a key's
    /// blocks in a run and the read of an event, one after the other.
    async fn explain(&self, tenant: &TenantId, query: &EventQuery) -> Result<String, StoreError> {
        let statements = match posting_keys(query) {
            Some(keys) => runs::explain(tenant, query, &keys)?,
            None => {
                let sql = build_query("", tenant, query)?;
                vec![(sql.text, sql.binds)]
            }
        };
        self.read(move |conn| {
            let mut lines = Vec::new();
            for (text, binds) in &statements {
                let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {text}"))?;
                let plan = explain.query_map(params_from_iter(binds), |row| {
                    row.get::<_, String>("detail")
                })?;
                for line in plan {
                    lines.push(line?);
                }
            }
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
            let mut select = conn.prepare_cached(&select_after(limit))?;
            events_of(select.query(params![tenant.as_str(), after.0])?)
        })
        .await
    }

    fn connections(&self) -> Connections {
        let (writers, writing) = self.inner.writer.usage();
        let (readers, reading) = self.inner.readers.usage();
        Connections {
            in_use: writing + reading,
            idle: (writers + readers).saturating_sub(writing + reading),
            max: writers + readers,
        }
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        self.read(|conn| {
            let mut select = conn.prepare_cached(super::TENANTS)?;
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
                "INSERT INTO checkpoints \
                 (tenant, tree_size, root_hash, issued_at, note, predecessor_size) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                checkpoint.tenant.as_str(),
                checkpoint.tree_size as i64,
                checkpoint.root.as_bytes(),
                micros(checkpoint.issued_at),
                checkpoint.note,
                super::predecessor_size(&checkpoint),
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
                    "INSERT INTO users (name, password_hash, role, tenant, created_at) \
                     VALUES (?, ?, ?, ?, ?)",
                )?
                .execute(params![
                    user.name,
                    user.password_hash,
                    user.role.as_str(),
                    user.tenant.as_str(),
                    micros(OffsetDateTime::now_utc()),
                ]);
            match added {
                Err(e) if is_unique_violation(&e) => Err(users::name_taken(&user.name)),
                other => other.map(drop).map_err(StoreError::from),
            }
        })
        .await
    }

    async fn find_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| {
            let mut select = conn.prepare_cached(users::FIND)?;
            Ok(users_of(select.query([name])?)?.into_iter().next())
        })
        .await
    }

    async fn add_token(&self, token: &NewToken) -> Result<(), StoreError> {
        self.insert_token(token).await
    }

    async fn add_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        self.insert_session(session).await
    }

    async fn find_session(
        &self,
        secret_hash: &Digest,
    ) -> Result<Option<SessionRecord>, StoreError> {
        self.select_session(secret_hash).await
    }

    async fn touch_session(
        &self,
        secret_hash: &Digest,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.update_session_seen(secret_hash, at).await
    }

    async fn remove_session(&self, secret_hash: &Digest) -> Result<(), StoreError> {
        self.delete_session(secret_hash).await
    }

    async fn remove_expired_sessions(
        &self,
        idle_before: OffsetDateTime,
        begun_before: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.delete_expired_sessions(idle_before, begun_before)
            .await
    }

    async fn capture_position(&self, capture: &str) -> Result<Option<(String, i64)>, StoreError> {
        let capture = capture.to_owned();
        self.read(move |conn| {
            let mut select = conn.prepare_cached(super::capture_positions::FIND)?;
            let mut rows = select.query([capture])?;
            match rows.next()? {
                Some(row) => Ok(Some((row.get(0)?, row.get(1)?))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn set_capture_position(
        &self,
        capture: &str,
        slot: &str,
        lsn: i64,
    ) -> Result<(), StoreError> {
        let (capture, slot) = (capture.to_owned(), slot.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(super::capture_positions::SET)?
                .execute(rusqlite::params![capture, slot, lsn])?;
            Ok(())
        })
        .await
    }

    async fn find_token(&self, secret_hash: &Digest) -> Result<Option<TokenRecord>, StoreError> {
        self.select_token(secret_hash).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.select_tokens().await
    }

    async fn revoke_token(&self, name: &str, at: OffsetDateTime) -> Result<(), StoreError> {
        self.mark_token_revoked(name, at).await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.read(|conn| {
            let mut select = conn.prepare_cached(users::LIST)?;
            users_of(select.query([])?)
        })
        .await
    }

    async fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(move |conn| {
            let removed = conn.prepare_cached(users::REMOVE)?.execute([name])?;
            users::removed(removed as u64)
        })
        .await
    }

    async fn count_users_with_role(&self, role: Role) -> Result<i64, StoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(users::COUNT_WITH_ROLE)?
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
