//! The PostgreSQL backend, for many stateless instances sharing one database. `event_data` is
//! JSONB; one GIN index over a document of the filterable fields and the payload serves every
//! equality filter. Appenders from every instance serialise on the tenant's chain-head row.
//! `events` is partitioned by month of `recorded_at`; this backend keeps the months ahead created
//! and the statistics of the month being appended to current.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use time::{Date, Month, OffsetDateTime};
use uuid::Uuid;

use super::assemble::{self, CommitClock, KeyIndex};
use super::rows::{self, EVENT_COLUMNS, ReadRow, SELECT_HEAD};
use super::{
    Appended, Connections, MonthPartition, Store, StoreError, corrupt, decode_tile, encode_tile,
    users,
};
use crate::integrity::dropped::DroppedPrefix;
use crate::integrity::tiles::{FullTile, TileId};
use crate::integrity::{Chained, Checkpoint, Digest};
use crate::model::event::truncate_to_micros;
use crate::model::fields::{Cell, Flag, Kind};
use crate::model::session::SessionRecord;
use crate::model::token::{NewToken, TokenRecord};
use crate::model::user::{NewUser, Role, UserRecord};
use crate::model::{
    Event, EventId, EventQuery, FIELDS, Field, Filter, Order, Seq, Submission, TenantId,
};

mod partitions;
mod sessions;
mod tokens;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/postgres");

/// Partitions of `events` kept ready beyond the current month. Three months of slack means a
/// maintenance pass (at start, then hourly) can fail for weeks before an insert has to create
/// its month on demand. Migration 0003 creates the same span.
pub const PARTITION_MONTHS_AHEAD: u32 = 3;

/// How long adding a partition may wait for its locks (ATTACH takes SHARE UPDATE EXCLUSIVE on
/// `events`, which waits for a running VACUUM or ANALYZE): better to fail and retry on the next
/// pass than to stall.
const PARTITION_LOCK_TIMEOUT: &str = "5s";

/// The document `events_filters` indexes (migration 0006), spelled as a query must spell it for
/// the planner to match the index.
pub const FILTER_DOCUMENT: &str = "events_filter_document(tenant, event_type, action, entity, \
    entity_id, property, source, ip, outcome, recorded_by, event_data)";

/// A partition is analysed once this many rows were appended to it since its last `ANALYZE`
/// by this instance, or half as many as it then held if that is more (see [`Statistics`]).
const ANALYZE_AFTER_ROWS: u64 = 10_000;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    clock: Arc<CommitClock>,
    statistics: Arc<Mutex<Statistics>>,
    /// `ANALYZE` and `VACUUM` started by appends, run beside them; [`PgStore::settle`] awaits them.
    background: Arc<Mutex<tokio::task::JoinSet<()>>>,
    /// Partitions with a post-redaction `VACUUM` queued but not yet started.
    vacuum_waiting: Arc<Mutex<HashSet<String>>>,
}

/// What this instance appended to each partition since it last analysed it.
///
/// Whether a filter is answered from `events_filters` (a bitmap of the matches, then sorted by
/// `seq`) or by walking the primary key in `seq` order until a page is full depends on how many
/// rows the planner expects to match, so its statistics must follow the partition's growth.
/// Without them, right after a load, it takes `tenant = …` for a selective condition and a value
/// for a rare one: measured at 1M events, 50 ms for a user's page and 1.4 s for a frequent value,
/// against under 1 ms with statistics. Autovacuum may be off or a minute behind, so the appender
/// runs `ANALYZE` itself, in the background, when a partition has grown by half since.
#[derive(Default)]
struct Statistics {
    partitions: HashMap<String, Growth>,
}

#[derive(Default)]
struct Growth {
    appended: u64,
    rows_when_analysed: u64,
    running: bool,
    last_append: Option<tokio::time::Instant>,
    /// A task waits for the appends to this partition to pause, to settle it then.
    awaiting_pause: bool,
}

/// What an append asks of the background.
#[derive(Debug, Default, PartialEq, Eq)]
struct Due {
    analyze: bool,
    /// Start the task that merges the partition's GIN pending list once appends pause.
    watch_for_pause: bool,
}

impl Statistics {
    /// Counts appended rows; says whether the partition should be analysed now (and marks it
    /// so), and whether a task must start to merge its pending list once appends pause.
    fn appended(&mut self, partition: &str, rows: u64) -> Due {
        let growth = self.partitions.entry(partition.to_owned()).or_default();
        growth.appended += rows;
        growth.last_append = Some(tokio::time::Instant::now());
        let mut due = Due::default();
        if !growth.awaiting_pause {
            growth.awaiting_pause = true;
            due.watch_for_pause = true;
        }
        let grown = growth.appended >= ANALYZE_AFTER_ROWS.max(growth.rows_when_analysed / 2);
        if grown && !growth.running {
            growth.running = true;
            growth.appended = 0;
            due.analyze = true;
        }
        due
    }

    /// True once appends to `partition` have paused for [`SETTLE_AFTER_PAUSE`]; the task that
    /// waited for it ends then.
    fn paused(&mut self, partition: &str) -> bool {
        let growth = self.partitions.entry(partition.to_owned()).or_default();
        if growth
            .last_append
            .is_some_and(|last| last.elapsed() < SETTLE_AFTER_PAUSE)
        {
            return false;
        }
        growth.awaiting_pause = false;
        true
    }

    fn last_append(&self, partition: &str) -> Option<tokio::time::Instant> {
        self.partitions.get(partition)?.last_append
    }

    fn analysed(&mut self, partition: &str, rows: Option<u64>) {
        let growth = self.partitions.entry(partition.to_owned()).or_default();
        growth.running = false;
        if let Some(rows) = rows {
            growth.rows_when_analysed = rows;
        }
    }
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = match PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
        {
            Ok(pool) => pool,
            Err(error) => {
                // The pool's own error is often only that it timed out: one connection of
                // its own says why (refused, no such database, authentication failed).
                use sqlx::Connection;
                let cause = match sqlx::PgConnection::connect(url).await {
                    Err(cause) => cause,
                    Ok(_) => error,
                };
                let at = crate::config::DatabaseUrl::new(url.to_owned());
                return Err(StoreError::Unavailable(
                    format!("cannot connect to {at}: {cause}").into(),
                ));
            }
        };
        Ok(Self {
            pool,
            clock: Arc::default(),
            statistics: Arc::default(),
            background: Arc::default(),
            vacuum_waiting: Arc::default(),
        })
    }

    /// A page of a query as the planner chooses to read it ([`build_query`]).
    async fn query_in_seq_order(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> Result<Vec<Event>, StoreError> {
        let mut builder = build_query("", tenant, query)?;
        let rows = builder.build().fetch_all(&self.pool).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// A page of a query whose filters only `events_filters` serves.
    ///
    /// The planner cannot tell a rare value from a frequent one there: it estimates a
    /// containment in the filter document at 1 % of the rows at least, however rare the value,
    /// and pages in `seq` order through the primary key, testing every row. For a value held by
    /// ten events in a million that reads the whole log (0.4–1.6 s), where the index answers in
    /// a millisecond; the other plan, collecting every match through the index and sorting them,
    /// costs in proportion to the matches, far too much for a value a third of the log holds.
    /// So the page is built in steps, each cheap where the one before is not:
    /// 1. the first [`FIRST_WINDOW_ROWS`] events in the query's order, tested row by row (under
    ///    a millisecond; a value held by one event in ten fills its page here);
    /// 2. if the window's matches, scaled to the rest of the log, are fewer than
    ///    [`FILTER_INDEX_PROBE_ROWS`]: every match after the window collected through the index
    ///    alone, if there are indeed fewer (a rare value);
    /// 3. otherwise paging on in `seq` order, testing each row.
    ///
    /// A value in between (a few thousand matches in a million, none of them in the first
    /// window) is the expensive case: step 3 then reads many rows.
    async fn query_filter_index_only(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> Result<Vec<Event>, StoreError> {
        let Some(head) = self.head(tenant).await? else {
            return Ok(Vec::new());
        };
        let start = match (query.after, query.order) {
            (Some(after), _) => after.0,
            (None, Order::Asc) => 0,
            (None, Order::Desc) => head.seq.0 + 1,
        };
        // The window `(lower, upper)`, the cursor after it, and how many events lie beyond it.
        let (window, rest_after, beyond) = match query.order {
            Order::Asc => (
                (start, start + FIRST_WINDOW_ROWS + 1),
                start + FIRST_WINDOW_ROWS,
                head.seq.0 - start - FIRST_WINDOW_ROWS,
            ),
            Order::Desc => (
                (start - FIRST_WINDOW_ROWS - 1, start),
                start - FIRST_WINDOW_ROWS,
                start - FIRST_WINDOW_ROWS - 1,
            ),
        };
        let mut builder = build_window_query("", tenant, query, Some(window))?;
        let rows = builder.build().fetch_all(&self.pool).await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = usize::try_from(query.fetch_limit()).unwrap_or(usize::MAX);
        if events.len() >= wanted || beyond <= 0 {
            return Ok(events);
        }
        let rest = EventQuery {
            after: Some(Seq(rest_after)),
            ..query.clone()
        };
        let expected = events.len() as i64 * beyond / FIRST_WINDOW_ROWS;
        let probed = if expected < FILTER_INDEX_PROBE_ROWS {
            self.query_through_filter_index(tenant, &rest).await?
        } else {
            None
        };
        let more = match probed {
            Some(more) => more,
            None => self.query_in_seq_order(tenant, &rest).await?,
        };
        events.extend(more);
        events.truncate(wanted);
        Ok(events)
    }

    /// A page of a query that only `events_filters` serves, collected through that index alone,
    /// if it has fewer than [`FILTER_INDEX_PROBE_ROWS`] matches after the cursor; `None`
    /// otherwise. Plain index and sequential scans are off for these statements, so the planner
    /// takes a bitmap of the index (and of the primary keys to fetch the page).
    async fn query_through_filter_index(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> Result<Option<Vec<Event>>, StoreError> {
        let probe_rows = FILTER_INDEX_PROBE_ROWS.max(4 * query.fetch_limit());
        let direction = match query.order {
            Order::Asc => "ASC",
            Order::Desc => "DESC",
        };
        // One statement, so one snapshot: the matches (at most `probe_rows`), how many, and the
        // page of them, fetched by primary key.
        let mut probe = QueryBuilder::<Postgres>::new(
            "WITH matches AS MATERIALIZED (SELECT seq FROM events WHERE ",
        );
        push_conditions(&mut probe, tenant, query, FilterIndex::Only)?;
        probe.push(" LIMIT ").push_bind(probe_rows);
        probe.push(format!(
            ") SELECT {}, (SELECT count(*) FROM matches) AS matched FROM events WHERE tenant = ",
            *EVENT_COLUMNS
        ));
        probe.push_bind(tenant.as_str().to_owned());
        probe.push(format!(
            " AND seq IN (SELECT seq FROM matches ORDER BY seq {direction} LIMIT "
        ));
        probe.push_bind(query.fetch_limit());
        probe.push(format!(") ORDER BY seq {direction}"));
        // Turning scans off makes their cost a penalty the planner adds, which takes the estimate
        // over JIT's threshold: compiling the plan then took 33 ms of a 1 ms query.
        let mut tx = self.pool.begin().await?;
        sqlx::raw_sql(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_indexscan = off; SET LOCAL jit = off",
        )
        .execute(&mut *tx)
        .await?;
        let rows = probe.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let matched: i64 = match rows.first() {
            Some(row) => row.try_get("matched")?,
            None => 0,
        };
        if matched >= probe_rows {
            return Ok(None);
        }
        let events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(events))
    }

    /// Waits for the `ANALYZE` and `VACUUM` runs that appends started so far, and for the
    /// pending lists merged after a pause of [`SETTLE_AFTER_PAUSE`], so that a test or a tool
    /// sees their effect.
    pub async fn settle(&self) {
        let mut tasks =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|e| e.into_inner()));
        while tasks.join_next().await.is_some() {}
    }

    fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.background.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// After an append to `partition`: analyses it in the background if it grew enough, and
    /// merges its filter index's pending list once appends pause.
    fn count_appended(&self, partition: String, rows: u64) {
        let due = self
            .statistics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .appended(&partition, rows);
        if due.analyze {
            let (pool, statistics, partition) = (
                self.pool.clone(),
                self.statistics.clone(),
                partition.clone(),
            );
            self.spawn_background(analyze_in_background(pool, statistics, partition));
        }
        if due.watch_for_pause {
            let (pool, statistics) = (self.pool.clone(), self.statistics.clone());
            self.spawn_background(settle_after_pause(pool, statistics, partition));
        }
    }

    /// After a redaction committed: `VACUUM` of the partitions holding the erased payloads, so
    /// that the row versions that still hold them, and their entries in `events_filters`, go.
    /// Until then no query can return them (they are dead), but their bytes are on disk.
    ///
    /// A run that has not started yet covers every redaction committed before it starts, so a
    /// partition with one waiting gets no second (many erasures in a row queue one VACUUM,
    /// not one each).
    fn vacuum_redacted(&self, partitions: HashSet<String>) {
        for partition in partitions {
            let waiting = self.vacuum_waiting.clone();
            if !waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(partition.clone())
            {
                continue;
            }
            let pool = self.pool.clone();
            self.spawn_background(async move {
                let vacuum = async {
                    let mut conn = pool.acquire().await?;
                    waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&partition);
                    // `partition` is `tableoid::regclass::text` (PostgreSQL's own quoted name) or
                    // `idempotency_keys`.
                    let sql = format!("VACUUM {partition}");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *conn)
                        .await
                };
                if let Err(error) = vacuum.await {
                    waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&partition);
                    tracing::warn!(partition, error = %error, "could not vacuum after an erasure");
                }
            });
        }
    }

    /// Adds the `events` partition of the UTC month containing `day` (`events_y2026m11`);
    /// `false` if it was already there. Safe to call from several instances at once: the SQL
    /// function `events_add_partition` (migration 0003) serialises callers on an advisory lock.
    pub async fn add_partition(&self, day: Date) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'"
        )))
        .execute(&mut *tx)
        .await?;
        let created: bool = sqlx::query_scalar("SELECT events_add_partition($1)")
            .bind(first_of_month(day))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        if created {
            tracing::info!(partition = %partition_name(day), "added an events partition");
        }
        Ok(created)
    }

    /// Makes sure the partitions of `now`'s month and the [`PARTITION_MONTHS_AHEAD`] after it
    /// exist. Returns how many were added.
    pub async fn ensure_partitions(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        let mut month = first_of_month(now.to_offset(time::UtcOffset::UTC).date());
        let mut added = 0;
        for _ in 0..=PARTITION_MONTHS_AHEAD {
            added += usize::from(self.add_partition(month).await?);
            month = next_month(month);
        }
        Ok(added)
    }

    /// One attempt at [`Self::append_with`]. Sets `tried` to the commit time it chose, whose
    /// month's partition the insert needs. With `drop`, the same transaction drops a partition
    /// ([`Store::drop_partition`]) after appending the batch, its records.
    async fn append_once(
        &self,
        batch: &[Submission],
        clock: Option<OffsetDateTime>,
        tried: &mut OffsetDateTime,
        drop: Option<(&MonthPartition, &[(TenantId, DroppedPrefix)])>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut heads = HashMap::new();
        for tenant in assemble::tenants(batch) {
            let head = lock_head(&mut tx, &tenant).await?;
            heads.insert(tenant, head);
        }
        let mut known = KeyIndex::new();
        let keys = assemble::idempotency_keys(batch);
        if !keys.is_empty() {
            let tenants: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
            let names: Vec<&str> = keys.iter().map(|(_, k)| k.as_str()).collect();
            let rows = sqlx::query(sqlx::AssertSqlSafe(KNOWN_KEYS.as_str()))
                .bind(&tenants)
                .bind(&names)
                .fetch_all(&mut *tx)
                .await?;
            for row in &rows {
                let event = event_from_row(row)?;
                if let Some(key) = event.idempotency_key.clone() {
                    known.insert((event.tenant.clone(), key), event);
                }
            }
        }
        let clock = truncate_to_micros(clock.unwrap_or_else(OffsetDateTime::now_utc));
        let recorded_at = self.clock.commit_time(clock, &heads);
        *tried = recorded_at;
        let targets = erasure_targets(&mut tx, batch).await?;
        let assembled = assemble::assemble(batch.to_vec(), known, &targets, heads, recorded_at)
            .map_err(|e| StoreError::Other(e.into()))?;
        insert_events(&mut tx, &assembled.rows).await?;
        insert_tiles(&mut tx, &assembled.tiles).await?;
        let erased = erase_events(&mut tx, &assembled.erasures).await?;
        if let Some((partition, prefixes)) = drop {
            partitions::drop_in(&mut tx, partition, prefixes, recorded_at).await?;
        }
        for (tenant, head) in &assembled.heads {
            sqlx::query(
                "UPDATE chain_heads SET seq = $2, hash = $3, partial_tiles = $4, recorded_at = $5 \
                 WHERE tenant = $1",
            )
            .bind(tenant.as_str())
            .bind(head.seq.0)
            .bind(head.hash.as_bytes())
            .bind(head.frontier.to_bytes())
            .bind(head.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if let Some((partition, _)) = drop {
            self.statistics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .partitions
                .remove(&partition.name);
        }
        if !assembled.rows.is_empty() {
            let partition = partition_name(recorded_at.to_offset(time::UtcOffset::UTC).date());
            self.count_appended(partition, assembled.rows.len() as u64);
        }
        if !erased.is_empty() {
            self.vacuum_redacted(erased);
        }
        Ok(assembled.outcomes)
    }
}

/// How long appends to a partition must pause before its pending list is merged.
const SETTLE_AFTER_PAUSE: Duration = Duration::from_secs(1);

async fn analyze_in_background(
    pool: PgPool,
    statistics: Arc<Mutex<Statistics>>,
    partition: String,
) {
    let rows = match analyze(&pool, &partition).await {
        Ok(rows) => Some(rows),
        Err(error) => {
            tracing::warn!(partition, error = %error, "could not analyse a partition");
            None
        }
    };
    statistics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .analysed(&partition, rows);
}

/// Once appends to `partition` pause: merges the pending list of its `events_filters` into the
/// index. Every scan of a GIN index reads the whole pending list (up to 1 MiB, migration 0006;
/// 75 pages holding 3,347 rows after a load of 1M events), and nothing else merges it until
/// autovacuum comes round, if it is on.
async fn settle_after_pause(pool: PgPool, statistics: Arc<Mutex<Statistics>>, partition: String) {
    loop {
        let last = statistics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_append(&partition);
        if let Some(last) = last {
            tokio::time::sleep_until(last + SETTLE_AFTER_PAUSE).await;
        }
        if statistics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .paused(&partition)
        {
            break;
        }
    }
    if let Err(error) = clean_pending_list(&pool, &partition).await {
        tracing::warn!(partition, error = %error, "could not merge a filter index's pending list");
    }
}

/// `gin_clean_pending_list` of the partition's part of `events_filters`.
async fn clean_pending_list(pool: &PgPool, partition: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT gin_clean_pending_list(i.indexrelid) FROM pg_index i \
         JOIN pg_inherits h ON h.inhrelid = i.indexrelid \
         WHERE h.inhparent = 'events_filters'::regclass AND i.indrelid = $1::regclass",
    )
    .bind(partition)
    .execute(pool)
    .await?;
    Ok(())
}

/// `ANALYZE` of one partition; returns how many rows it now estimates.
async fn analyze(pool: &PgPool, partition: &str) -> Result<u64, sqlx::Error> {
    let sql = format!("ANALYZE {}", quote_identifier(partition));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await?;
    let rows: f32 = sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = $1::regclass")
        .bind(partition)
        .fetch_one(pool)
        .await?;
    Ok(rows.max(0.0) as u64)
}

/// A partition's name as a quoted SQL identifier (they are made by `events_add_partition`:
/// lowercase letters and digits, so this changes nothing but keeps SQL out of a formatted name).
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn first_of_month(day: Date) -> Date {
    day.replace_day(1).unwrap_or(day)
}

fn next_month(day: Date) -> Date {
    let (year, month) = match day.month() {
        Month::December => (day.year() + 1, Month::January),
        month => (day.year(), month.next()),
    };
    Date::from_calendar_date(year, month, 1).unwrap_or(day)
}

/// The partition holding the UTC month of `day`, as `events_add_partition` names it.
pub fn partition_name(day: Date) -> String {
    format!("events_y{:04}m{:02}", day.year(), u8::from(day.month()))
}

/// An insert found no partition for its `recorded_at`: SQLSTATE 23514 (check_violation) like a
/// failed CHECK constraint, but without a constraint name (the message text is translated).
fn is_missing_partition(error: &StoreError) -> bool {
    let StoreError::Other(error) = error else {
        return false;
    };
    match error.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => {
            db.code().as_deref() == Some("23514") && db.constraint().is_none()
        }
        _ => false,
    }
}

/// A row read a column at a time, in the order selected: each read takes the next position,
/// whose name is checked (a short comparison) before the lookup by name that a row whose
/// columns were selected in another order falls back to. Looking every column up by name
/// hashed it, a tenth of decoding an event.
struct Columns<'r> {
    row: &'r PgRow,
    next: usize,
}

impl<'r> Columns<'r> {
    fn new(row: &'r PgRow) -> Self {
        Self { row, next: 0 }
    }

    fn get<T>(&mut self, name: &'static str) -> Result<T, sqlx::Error>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        let at = self.next;
        let positional = self
            .row
            .columns()
            .get(at)
            .is_some_and(|column| sqlx::Column::name(column) == name);
        if positional {
            self.next = at + 1;
            self.row.try_get(at)
        } else {
            self.row.try_get(name)
        }
    }
}

impl<'r> ReadRow<'r> for Columns<'r> {
    fn cell(&mut self, name: &'static str, kind: Kind) -> Result<Option<Cell<'r>>, StoreError> {
        Ok(match kind {
            Kind::Text => self
                .get::<Option<&str>>(name)?
                .map(|text| Cell::Text(Cow::Borrowed(text))),
            Kind::Integer => self.get::<Option<i64>>(name)?.map(Cell::Integer),
            Kind::Uuid => self.get::<Option<Uuid>>(name)?.map(Cell::Uuid),
            Kind::Time => self.get::<Option<OffsetDateTime>>(name)?.map(Cell::Time),
            Kind::Json => self
                .get::<Option<Json<Map<String, Value>>>>(name)?
                .map(|Json(map)| Cell::Json(Cow::Owned(map))),
            Kind::Bytes => self
                .get::<Option<&[u8]>>(name)?
                .map(|bytes| Cell::Bytes(Cow::Borrowed(bytes))),
        })
    }
}

/// Rows of a scan below which they are decoded on one thread.
const DECODED_ON_ONE_THREAD: usize = 1024;

/// Decodes a scan's rows into events, a large page's second half on a blocking thread while
/// this task decodes the first: decoding is most of reading a page (an export or `verify`
/// of the whole log), and would otherwise use one core whatever the machine has.
async fn decode_in_halves(mut rows: Vec<PgRow>) -> Result<Vec<Event>, StoreError> {
    if rows.len() < DECODED_ON_ONE_THREAD {
        return rows.iter().map(event_from_row).collect();
    }
    let second = rows.split_off(rows.len() / 2);
    let second = tokio::task::spawn_blocking(move || {
        second
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()
    });
    let mut events = rows
        .iter()
        .map(event_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    events.extend(second.await.map_err(|e| StoreError::Other(e.into()))??);
    Ok(events)
}

fn event_from_row(row: &PgRow) -> Result<Event, StoreError> {
    rows::event(&mut Columns::new(row))
}

/// The INSERT of [`insert_events`]: one array parameter per declared column, of its kind's type.
static INSERT_EVENTS: LazyLock<String> = LazyLock::new(|| {
    let arrays: Vec<String> = FIELDS
        .iter()
        .enumerate()
        .map(|(i, field)| format!("${}::{}[]", i + 1, column_type(field.kind)))
        .collect();
    format!(
        "WITH batch AS (SELECT * FROM UNNEST({arrays}) AS b({columns})), \
         keys AS (INSERT INTO idempotency_keys (tenant, idempotency_key, seq, recorded_at) \
         SELECT tenant, idempotency_key, seq, recorded_at FROM batch \
         WHERE idempotency_key IS NOT NULL) \
         INSERT INTO events ({columns}) SELECT * FROM batch",
        arrays = arrays.join(", "),
        columns = *EVENT_COLUMNS,
    )
});

/// The column type that holds a kind.
fn column_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "text",
        Kind::Integer => "int8",
        Kind::Uuid => "uuid",
        Kind::Time => "timestamptz",
        Kind::Json => "jsonb",
        Kind::Bytes => "bytea",
    }
}

/// Column `index` of every row, as `value` takes it from its cell.
fn column_of<'a, T>(
    rows: &'a [[Option<Cell<'a>>; Event::COUNT]],
    index: usize,
    value: impl Fn(&'a Cell<'a>) -> Option<T>,
) -> Result<Vec<Option<T>>, StoreError> {
    rows.iter()
        .map(|row| {
            row[index]
                .as_ref()
                .map(|cell| {
                    value(cell).ok_or_else(|| {
                        let name = FIELDS[index].name;
                        StoreError::Other(anyhow::anyhow!("{name} is not of its declared kind"))
                    })
                })
                .transpose()
        })
        .collect()
}

/// The events already recorded under some of a batch's idempotency keys: `$1` the tenants,
/// `$2` the keys, zipped. Each key is looked up on its own, through the keys' primary key and
/// then the event's (only the partition of its month is read): joined as sets instead, the
/// planner reads every event once a batch holds a thousand keys, seconds at millions of events.
pub static KNOWN_KEYS: LazyLock<String> = LazyLock::new(|| {
    let columns = FIELDS
        .iter()
        .map(|field| format!("e.{}", field.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {columns} FROM UNNEST($1::text[], $2::text[]) AS k(tenant, idempotency_key) \
         CROSS JOIN LATERAL (SELECT i.seq, i.recorded_at FROM idempotency_keys i \
             WHERE i.tenant = k.tenant AND i.idempotency_key = k.idempotency_key LIMIT 1) i \
         CROSS JOIN LATERAL (SELECT * FROM events e \
             WHERE e.tenant = k.tenant AND e.seq = i.seq AND e.recorded_at = i.recorded_at \
             LIMIT 1) e"
    )
});

/// Inserts a batch's rows in one statement: one array per column, zipped by UNNEST. The same
/// statement records each idempotency key in `idempotency_keys`, whose primary key keeps keys
/// unique per tenant across partitions.
async fn insert_events(conn: &mut sqlx::PgConnection, events: &[Event]) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = events.iter().map(Event::columns).collect();
    let insert = sqlx::query(sqlx::AssertSqlSafe(INSERT_EVENTS.as_str()));
    bind_arrays(insert, &rows, 0..FIELDS.len())?
        .execute(conn)
        .await?;
    Ok(())
}

/// The columns an erasure rewrites: the event's key, then every `Erasable` one.
static ERASURE_COLUMNS: LazyLock<Vec<usize>> = LazyLock::new(|| {
    let index = |name: &str| FIELDS.iter().position(|f| f.name == name);
    ["tenant", "seq", "recorded_at"]
        .into_iter()
        .filter_map(index)
        .chain((0..FIELDS.len()).filter(|&i| FIELDS[i].is(Flag::Erasable)))
        .collect()
});

/// The UPDATE of [`erase_events`]: one array parameter per column of [`ERASURE_COLUMNS`].
static ERASE_EVENTS: LazyLock<String> = LazyLock::new(|| {
    let columns = &*ERASURE_COLUMNS;
    let arrays: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, &field)| format!("${}::{}[]", i + 1, column_type(FIELDS[field].kind)))
        .collect();
    let names: Vec<&str> = columns.iter().map(|&i| FIELDS[i].name).collect();
    let sets: Vec<String> = names[3..]
        .iter()
        .map(|name| format!("{name} = b.{name}"))
        .collect();
    format!(
        "UPDATE events e SET {sets} FROM UNNEST({arrays}) AS b({names}) \
         WHERE e.tenant = b.tenant AND e.seq = b.seq AND e.recorded_at = b.recorded_at \
         RETURNING e.tableoid::regclass::text",
        sets = sets.join(", "),
        arrays = arrays.join(", "),
        names = names.join(", "),
    )
});

/// Writes erased events over their rows (the key columns locate them, the `Erasable` ones are
/// rewritten), and deletes the idempotency keys they no longer hold. Returns the tables written
/// (partitions of `events`, `idempotency_keys`), which hold the erased values in dead row
/// versions until vacuumed.
async fn erase_events(
    conn: &mut sqlx::PgConnection,
    erasures: &[(Event, Event)],
) -> Result<HashSet<String>, StoreError> {
    if erasures.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<_> = erasures.iter().map(|(_, after)| after.columns()).collect();
    let update = sqlx::query(sqlx::AssertSqlSafe(ERASE_EVENTS.as_str()));
    let partitions = bind_arrays(update, &rows, ERASURE_COLUMNS.iter().copied())?
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<HashSet<_>, _>>()?;
    let (tenants, keys): (Vec<&str>, Vec<&str>) = erasures
        .iter()
        .filter(|(_, after)| after.idempotency_key.is_none())
        .filter_map(|(before, _)| {
            Some((before.tenant.as_str(), before.idempotency_key.as_deref()?))
        })
        .unzip();
    let mut written = partitions;
    if !keys.is_empty() {
        sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE (tenant, idempotency_key) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        )
        .bind(&tenants)
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
        written.insert("idempotency_keys".to_owned());
    }
    Ok(written)
}

/// Binds, for each column index in `columns`, the array of that column over `rows`, typed by
/// its kind.
fn bind_arrays<'q>(
    mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    rows: &'q [[Option<Cell<'q>>; Event::COUNT]],
    columns: impl IntoIterator<Item = usize>,
) -> Result<sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>, StoreError> {
    for i in columns {
        query = match FIELDS[i].kind {
            Kind::Text => query.bind(column_of(rows, i, |cell| match cell {
                Cell::Text(text) => Some(text.as_ref()),
                _ => None,
            })?),
            Kind::Integer => query.bind(column_of(rows, i, |cell| match cell {
                Cell::Integer(value) => Some(*value),
                _ => None,
            })?),
            Kind::Uuid => query.bind(column_of(rows, i, |cell| match cell {
                Cell::Uuid(id) => Some(*id),
                _ => None,
            })?),
            Kind::Time => query.bind(column_of(rows, i, |cell| match cell {
                Cell::Time(t) => Some(*t),
                _ => None,
            })?),
            Kind::Json => query.bind(column_of(rows, i, |cell| match cell {
                Cell::Json(map) => Some(Json(map.as_ref())),
                _ => None,
            })?),
            Kind::Bytes => query.bind(column_of(rows, i, |cell| match cell {
                Cell::Bytes(bytes) => Some(bytes.as_ref()),
                _ => None,
            })?),
        };
    }
    Ok(query)
}

/// The stored events an erasure names, as they are in the append's transaction.
async fn erasure_targets(
    conn: &mut sqlx::PgConnection,
    batch: &[Submission],
) -> Result<assemble::Targets, StoreError> {
    let mut found = assemble::Targets::new();
    for (tenant, targets) in assemble::erasure_targets(batch) {
        let mut select =
            QueryBuilder::<Postgres>::new(format!("SELECT {} FROM events WHERE ", *EVENT_COLUMNS));
        match assemble::TargetLookup::of(&targets) {
            assemble::TargetLookup::Filter(filter) => {
                let query = EventQuery {
                    filters: vec![filter],
                    ..EventQuery::default()
                };
                push_conditions(&mut select, &tenant, &query, FilterIndex::Use)?;
            }
            assemble::TargetLookup::Range(first, last) => {
                select
                    .push("tenant = ")
                    .push_bind(tenant.as_str().to_owned());
                select.push(" AND seq BETWEEN ").push_bind(first.0);
                select.push(" AND ").push_bind(last.0);
            }
        }
        select.push(" ORDER BY seq");
        let rows = select.build().fetch_all(&mut *conn).await?;
        let events = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        found.insert((tenant, targets), events);
    }
    Ok(found)
}

async fn insert_tiles(
    conn: &mut sqlx::PgConnection,
    tiles: &[(TenantId, FullTile)],
) -> Result<(), StoreError> {
    if tiles.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = tiles.iter().map(|(t, _)| t.as_str()).collect();
    let levels: Vec<i16> = tiles.iter().map(|(_, t)| i16::from(t.id.level)).collect();
    let indexes: Vec<i64> = tiles.iter().map(|(_, t)| t.id.index as i64).collect();
    let hashes: Vec<Vec<u8>> = tiles.iter().map(|(_, t)| encode_tile(&t.hashes)).collect();
    sqlx::query(
        "INSERT INTO tiles (tenant, level, idx, hashes) \
         SELECT * FROM UNNEST($1::text[], $2::int2[], $3::int8[], $4::bytea[])",
    )
    .bind(&tenants)
    .bind(&levels)
    .bind(&indexes)
    .bind(&hashes)
    .execute(conn)
    .await?;
    Ok(())
}

fn head_from_row(row: &PgRow) -> Result<Chained, StoreError> {
    rows::head(&mut Columns::new(row))
}

fn checkpoint_from_row(row: &PgRow) -> Result<Checkpoint, StoreError> {
    rows::checkpoint(&mut Columns::new(row))
}

static LOCK_HEAD: LazyLock<String> = LazyLock::new(|| format!("{SELECT_HEAD} FOR UPDATE"));

/// Locks the tenant's chain head for the rest of the transaction, creating it on first use.
/// Every instance appending to the tenant queues here, which keeps `seq` gapless and the chain
/// linear without any coordination between instances.
async fn lock_head(
    conn: &mut sqlx::PgConnection,
    tenant: &TenantId,
) -> Result<Chained, StoreError> {
    if let Some(row) = sqlx::query(sqlx::AssertSqlSafe(LOCK_HEAD.as_str()))
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await?
    {
        return head_from_row(&row);
    }
    sqlx::query(
        "INSERT INTO chain_heads (tenant, seq, hash, partial_tiles) VALUES ($1, 0, $2, $3) \
         ON CONFLICT (tenant) DO NOTHING",
    )
    .bind(tenant.as_str())
    .bind(Digest::ZERO.as_bytes())
    .bind(Vec::<u8>::new())
    .execute(&mut *conn)
    .await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(LOCK_HEAD.as_str()))
        .bind(tenant.as_str())
        .fetch_one(&mut *conn)
        .await?;
    head_from_row(&row)
}

/// Adds one filter, in the form an index serves (see docs/write-path.md, "Indexes
/// (PostgreSQL)"). A filter that `events_filters` serves is written twice: the containment in
/// the filter document, which the index answers, and the test on the column, which is cheap and
/// checked first on each row. The column test is a function call (`texteq`, `jsonb_contains`)
/// rather than an operator so that the planner, which estimates a call it knows nothing about at
/// a fixed third, does not count the same condition's selectivity twice: it then expects a
/// value of 1 % to match 1 % of the rows, not 0.01 %, and pages through it in `seq` order
/// instead of sorting all its matches (7 ms instead of 116 ms at 1M events).
fn push_filter(
    builder: &mut QueryBuilder<Postgres>,
    tenant: &TenantId,
    filter: &Filter,
    index: FilterIndex,
) -> Result<(), StoreError> {
    match filter {
        // B-trees: `events_id`, `events_amends`; `events_user_identity` keeps a user's events in
        // `seq` order, however many there are. No containment beside them: the planner would
        // count the condition twice and sort a bitmap of a frequent user's events (116 ms for
        // one of 1 % at 1M events) instead of reading the B-tree in order (under 1 ms).
        Filter::Equals(field @ (Field::Id | Field::Amends), value) => {
            let id = EventId::from_str(value).map_err(|e| StoreError::Other(e.into()))?;
            builder.push(format!(" AND {} = ", field.name()));
            builder.push_bind(id.0);
        }
        Filter::Equals(Field::UserIdentity, value) => {
            builder.push(" AND user_identity = ");
            builder.push_bind(value.clone());
        }
        // The key's row names at most one event, by its full primary key.
        Filter::Equals(Field::IdempotencyKey, value) => {
            builder.push(
                " AND (seq, recorded_at) = (SELECT seq, recorded_at FROM idempotency_keys \
                 WHERE tenant = ",
            );
            builder.push_bind(tenant.as_str().to_owned());
            builder.push(" AND idempotency_key = ");
            builder.push_bind(value.clone());
            builder.push(")");
        }
        Filter::Equals(field, value) => {
            let mut fields = Map::new();
            fields.insert(field.name().to_owned(), Value::String(value.clone()));
            if index != FilterIndex::Skip {
                push_document(builder, tenant, fields);
            }
            builder.push(format!(" AND texteq({}, ", field.name()));
            builder.push_bind(value.clone());
            builder.push(")");
        }
        Filter::Data(path, value) => {
            let containing = path.containing(value.to_json());
            let mut fields = Map::new();
            fields.insert("d".to_owned(), containing.clone());
            if index != FilterIndex::Skip {
                push_document(builder, tenant, fields);
            }
            builder.push(" AND jsonb_contains(event_data, ");
            builder.push_bind(containing);
            builder.push(")");
        }
    }
    Ok(())
}

/// Whether a query's filters are written so that `events_filters` can serve them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterIndex {
    Use,
    /// Only the column tests: the rows are read by `seq` and each is tested.
    Skip,
    /// Nothing but the filter document can be read through an index: the tenant and the
    /// cursor are written as tests (`texteq`, `seq + 0`), so that no plan, even one made for
    /// any value (a generic plan), can intersect the index's matches with a range of the
    /// primary key (0.4 s for a `seq > $n` the planner took for a third of the log).
    Only,
}

/// `AND <filter document> @> {"<tenant>": fields}`: the form `events_filters` serves.
fn push_document(
    builder: &mut QueryBuilder<Postgres>,
    tenant: &TenantId,
    fields: Map<String, Value>,
) {
    let mut document = Map::new();
    document.insert(tenant.as_str().to_owned(), Value::Object(fields));
    builder.push(format!(" AND {FILTER_DOCUMENT} @> "));
    builder.push_bind(Value::Object(document));
}

/// The SQL of an event query (optionally prefixed, e.g. by `EXPLAIN`), with bound values only.
fn build_query(
    prefix: &str,
    tenant: &TenantId,
    query: &EventQuery,
) -> Result<QueryBuilder<Postgres>, StoreError> {
    build_window_query(prefix, tenant, query, None)
}

/// [`build_query`], or with a window `(lower, upper)` the SQL of the query over
/// `lower < seq < upper` only, without the filter document: the primary key is read in that
/// range and every row tested, not the filter index.
fn build_window_query(
    prefix: &str,
    tenant: &TenantId,
    query: &EventQuery,
    window: Option<(i64, i64)>,
) -> Result<QueryBuilder<Postgres>, StoreError> {
    let mut builder = QueryBuilder::<Postgres>::new(format!(
        "{prefix}SELECT {} FROM events WHERE ",
        *EVENT_COLUMNS
    ));
    let index = match window {
        Some(_) => FilterIndex::Skip,
        None => FilterIndex::Use,
    };
    push_conditions(&mut builder, tenant, query, index)?;
    if let Some((lower, upper)) = window {
        builder.push(" AND seq > ").push_bind(lower);
        builder.push(" AND seq < ").push_bind(upper);
    }
    let direction = match query.order {
        Order::Asc => " ORDER BY seq ASC LIMIT ",
        Order::Desc => " ORDER BY seq DESC LIMIT ",
    };
    builder.push(direction).push_bind(query.fetch_limit());
    Ok(builder)
}

/// `<tenant> AND <each filter> AND <time range> AND <cursor>`, after `WHERE `.
fn push_conditions(
    builder: &mut QueryBuilder<Postgres>,
    tenant: &TenantId,
    query: &EventQuery,
    index: FilterIndex,
) -> Result<(), StoreError> {
    let (tenant_test, seq) = match index {
        FilterIndex::Use | FilterIndex::Skip => ("tenant = ", "seq"),
        FilterIndex::Only => ("texteq(tenant, ", "(seq + 0)"),
    };
    builder.push(tenant_test);
    builder.push_bind(tenant.as_str().to_owned());
    if index == FilterIndex::Only {
        builder.push(")");
    }
    for filter in &query.filters {
        push_filter(builder, tenant, filter, index)?;
    }
    if let Some(since) = query.since {
        builder.push(" AND occurred_at >= ").push_bind(since);
    }
    if let Some(until) = query.until {
        builder.push(" AND occurred_at < ").push_bind(until);
    }
    if let Some(after) = query.after {
        let comparison = match query.order {
            Order::Asc => ">",
            Order::Desc => "<",
        };
        builder
            .push(format!(" AND {seq} {comparison} "))
            .push_bind(after.0);
    }
    Ok(())
}

/// Rows a query that only `events_filters` serves first reads in `seq` order; see
/// [`PgStore::query_filter_index_only`].
const FIRST_WINDOW_ROWS: i64 = 1024;

/// Most matches collected through `events_filters` alone before a query falls back to paging
/// in `seq` order.
const FILTER_INDEX_PROBE_ROWS: i64 = 2000;

/// True if the query's only indexed filters are those `events_filters` serves: no B-tree
/// (`id`, `amends`, `user_identity`, the idempotency key) gives its matches in `seq` order, and
/// no time range narrows them (`events_occurred_at` does).
fn served_by_filter_index_only(query: &EventQuery) -> bool {
    query.since.is_none()
        && query.until.is_none()
        && !query.filters.is_empty()
        && query.filters.iter().all(|filter| match filter {
            Filter::Equals(
                Field::Id | Field::Amends | Field::UserIdentity | Field::IdempotencyKey,
                _,
            ) => false,
            Filter::Equals(..) | Filter::Data(..) => true,
        })
}

fn user_from_row(row: &PgRow) -> Result<UserRecord, StoreError> {
    rows::user(&mut Columns::new(row))
}

impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        // Migration 0003 went by the database's clock; appends go by this instance's.
        self.ensure_partitions(OffsetDateTime::now_utc()).await?;
        Ok(())
    }

    async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let has_table: bool =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        let applied: Vec<i64> = if has_table {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
            .map(|m| m.version)
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// [`Store::append`], with the clock read once the chain heads are locked unless `clock` is
    /// given. An instance that waited for another's lock would otherwise hold a time older
    /// than that one's commit.
    async fn append_with(
        &self,
        batch: &[Submission],
        clock: Option<OffsetDateTime>,
    ) -> Result<Vec<Appended>, StoreError> {
        let mut tried = OffsetDateTime::UNIX_EPOCH;
        match self.append_once(batch, clock, &mut tried, None).await {
            Err(error) if is_missing_partition(&error) => {
                // The months ahead were not created (maintenance failing, or a clock far ahead):
                // add the month of the commit time tried and try again. The failed transaction
                // left nothing behind.
                let day = tried.date();
                tracing::warn!(
                    partition = %partition_name(day),
                    "no partition for an append; adding it"
                );
                self.add_partition(day).await?;
                self.append_once(batch, clock, &mut tried, None).await
            }
            other => other,
        }
    }

    async fn maintain(&self) -> Result<(), StoreError> {
        self.ensure_partitions(OffsetDateTime::now_utc()).await?;
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, id: EventId) -> Result<Option<Event>, StoreError> {
        let sql = format!(
            "SELECT {} FROM events WHERE tenant = $1 AND id = $2",
            *EVENT_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn query(&self, tenant: &TenantId, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        if served_by_filter_index_only(query) {
            return self.query_filter_index_only(tenant, query).await;
        }
        self.query_in_seq_order(tenant, query).await
    }

    async fn explain(&self, tenant: &TenantId, query: &EventQuery) -> Result<String, StoreError> {
        let mut builder = build_query("EXPLAIN ", tenant, query)?;
        let rows = builder.build().fetch_all(&self.pool).await?;
        let lines: Vec<String> = rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
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
            "SELECT {} FROM events WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            *EVENT_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant.as_str())
            .bind(after.0)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        decode_in_halves(rows).await
    }

    fn connections(&self) -> Connections {
        let (open, idle) = (self.pool.size() as usize, self.pool.num_idle());
        Connections {
            in_use: open.saturating_sub(idle),
            idle,
            max: self.pool.options().get_max_connections() as usize,
        }
    }

    async fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(super::TENANTS)
            .fetch_all(&self.pool)
            .await?;
        Ok(names.into_iter().map(TenantId::new).collect())
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<Chained>, StoreError> {
        let row = sqlx::query(SELECT_HEAD)
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(head_from_row).transpose()
    }

    async fn full_tiles(
        &self,
        tenant: &TenantId,
        ids: &[TileId],
    ) -> Result<HashMap<TileId, Vec<Digest>>, StoreError> {
        let (levels, indexes): (Vec<i16>, Vec<i64>) = ids
            .iter()
            .map(|id| (i16::from(id.level), id.index as i64))
            .unzip();
        let rows = sqlx::query(
            "SELECT t.level, t.idx, t.hashes FROM tiles t \
             JOIN UNNEST($2::int2[], $3::int8[]) AS w(level, idx) \
             ON t.level = w.level AND t.idx = w.idx WHERE t.tenant = $1",
        )
        .bind(tenant.as_str())
        .bind(&levels)
        .bind(&indexes)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let level: i16 = row.try_get("level")?;
                let index: i64 = row.try_get("idx")?;
                let hashes: Vec<u8> = row.try_get("hashes")?;
                let id = TileId {
                    level: u8::try_from(level).map_err(|e| corrupt("tiles.level", e))?,
                    index: index as u64,
                };
                Ok((id, decode_tile(&hashes)?))
            })
            .collect()
    }

    async fn add_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints \
             (tenant, tree_size, root_hash, issued_at, note, predecessor_size) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(checkpoint.tenant.as_str())
        .bind(checkpoint.tree_size as i64)
        .bind(checkpoint.root.as_bytes())
        .bind(checkpoint.issued_at)
        .bind(&checkpoint.note)
        .bind(super::predecessor_size(checkpoint))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn checkpoint(
        &self,
        tenant: &TenantId,
        tree_size: Option<u64>,
    ) -> Result<Option<Checkpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM checkpoints WHERE tenant = $1 AND ($2::int8 IS NULL OR tree_size = $2) \
             ORDER BY tree_size DESC LIMIT 1",
        )
        .bind(tenant.as_str())
        .bind(tree_size.map(|s| s as i64))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }

    async fn checkpoints(&self, tenant: &TenantId) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query("SELECT * FROM checkpoints WHERE tenant = $1 ORDER BY tree_size")
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    async fn dropped_prefix(&self, tenant: &TenantId) -> Result<Option<DroppedPrefix>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        partitions::latest_prefix(&mut conn, tenant).await
    }

    async fn oldest_partition(
        &self,
        ended_by: OffsetDateTime,
    ) -> Result<Option<MonthPartition>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        partitions::oldest(&mut conn, ended_by).await
    }

    async fn drop_partition(
        &self,
        partition: &MonthPartition,
        prefixes: &[(TenantId, DroppedPrefix)],
        records: &[Submission],
    ) -> Result<(), StoreError> {
        let mut tried = OffsetDateTime::UNIX_EPOCH;
        self.append_once(records, None, &mut tried, Some((partition, prefixes)))
            .await?;
        tracing::info!(partition = %partition.name, "dropped an events partition past retention");
        Ok(())
    }

    async fn add_user(&self, user: &NewUser) -> Result<(), StoreError> {
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, role, tenant) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.tenant.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(users::name_taken(&user.name));
        }
        Ok(())
    }

    async fn find_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(users::FIND)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
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
        Ok(sqlx::query_as(super::capture_positions::FIND)
            .bind(capture)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn set_capture_position(
        &self,
        capture: &str,
        slot: &str,
        lsn: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(super::capture_positions::SET)
            .bind(capture)
            .bind(slot)
            .bind(lsn)
            .execute(&self.pool)
            .await?;
        Ok(())
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
        let rows = sqlx::query(users::LIST).fetch_all(&self.pool).await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        let done = sqlx::query(users::REMOVE)
            .bind(name)
            .execute(&self.pool)
            .await?;
        users::removed(done.rows_affected())
    }

    async fn count_users_with_role(&self, role: Role) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(users::COUNT_WITH_ROLE)
            .bind(role.as_str())
            .fetch_one(&self.pool)
            .await?)
    }

    /// LISTENs, on a connection of its own, on the channel that migration 0005 notifies.
    fn watch_users(&self, shutdown: tokio_util::sync::CancellationToken) -> super::UsersWatch {
        let options = (*self.pool.connect_options())
            .clone()
            .application_name(USERS_LISTENER_APPLICATION);
        // Two: a dropped listener hands its connection back from a task of its own, which its
        // successor need not wait for.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(options);
        let watch = super::UsersWatch::new();
        tokio::spawn(listen_for_user_changes(pool, watch.clone(), shutdown));
        watch
    }
}

/// The channel migration 0005 notifies on every change to `users`.
const USERS_CHANNEL: &str = "auditor_users_changed";

/// The `application_name` of each server's users listener, by which its backend can be found in
/// `pg_stat_activity`.
pub const USERS_LISTENER_APPLICATION: &str = "auditor users listener";

/// How often the listener proves its connection alive with a `SELECT 1`. A notification cannot
/// tell a quiet connection from a dead one whose end never closed (a network partition): without
/// these answers the watch's lease runs out and authentication reads the table.
const USERS_LISTENER_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(250);

/// First and longest wait before listening again after the connection was lost.
const USERS_LISTENER_RETRY: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(5),
);

/// Keeps `watch` current from PostgreSQL's notifications until `shutdown`, listening again
/// whenever the connection is lost; the watch vouches for nothing until it listens again.
async fn listen_for_user_changes(
    pool: PgPool,
    watch: super::UsersWatch,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (first_retry, last_retry) = USERS_LISTENER_RETRY;
    let mut retry = first_retry;
    loop {
        let outcome = listen_until_lost(&pool, &watch, &shutdown, &mut retry).await;
        watch.lost();
        match outcome {
            Ok(()) => break,
            Err(error) => tracing::warn!(
                %error,
                "not listening for changes to users; authenticating from the users table until it listens again"
            ),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(last_retry);
    }
    pool.close().await;
}

/// Listens until `shutdown` (`Ok`) or until the connection fails or stops answering (`Err`).
/// Resets `retry` once listening.
async fn listen_until_lost(
    pool: &PgPool,
    watch: &super::UsersWatch,
    shutdown: &tokio_util::sync::CancellationToken,
    retry: &mut std::time::Duration,
) -> Result<(), sqlx::Error> {
    let lost = |what: &str| sqlx::Error::Io(std::io::Error::other(what.to_owned()));
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    // A lost connection must surface here rather than be replaced behind our back: changes
    // committed while it was down were never notified.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(USERS_CHANNEL).await?;
    // Changes committed from now on are notified; earlier ones are covered by a new generation.
    watch.changed();
    watch.confirm(tokio::time::Instant::now());
    *retry = USERS_LISTENER_RETRY.0;
    tracing::debug!("listening for changes to users");
    let mut heartbeat = tokio::time::interval(USERS_LISTENER_HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // `try_recv` may be dropped at the heartbeat: with its connection in place it only
        // awaits whole messages from the socket, which sqlx reads cancel-safely.
        let received = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            received = listener.try_recv() => Some(received),
            _ = heartbeat.tick() => None,
        };
        match received {
            Some(Ok(Some(_))) => watch.changed(),
            Some(Ok(None)) => return Err(lost("the listener's connection was closed")),
            Some(Err(error)) => return Err(error),
            None => {
                let sent = tokio::time::Instant::now();
                tokio::time::timeout(
                    super::users_watch::LEASE,
                    sqlx::query("SELECT 1").execute(&mut listener),
                )
                .await
                .map_err(|_| lost("the listener's connection stopped answering"))??;
                // PostgreSQL sends the notifications of what committed before this query ahead
                // of its answer, and sqlx keeps those that arrive during a query for `try_recv`:
                // count them before confirming.
                while listener.next_buffered().is_some() {
                    watch.changed();
                }
                watch.confirm(sent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field filtered through the filter document must be in it, or the filter matches
    /// nothing: declaring a filterable field needs a migration that adds it to
    /// `events_filter_document` (and the index), and `FILTER_DOCUMENT` to name it.
    #[test]
    fn every_field_filtered_through_the_document_is_in_it() {
        let (_, arguments) = FILTER_DOCUMENT.split_once('(').unwrap();
        let in_document: Vec<&str> = arguments
            .trim_end_matches(')')
            .split(',')
            .map(str::trim)
            .collect();
        for field in Field::ALL.iter().copied() {
            let value = match field.kind() {
                Kind::Uuid => EventId::new().to_string(),
                _ => "x".to_owned(),
            };
            let mut builder = QueryBuilder::<Postgres>::new("");
            push_filter(
                &mut builder,
                &TenantId::default(),
                &Filter::Equals(field, value),
                FilterIndex::Use,
            )
            .unwrap();
            if builder.into_string().contains(FILTER_DOCUMENT) {
                assert!(
                    in_document.contains(&field.name()),
                    "{} is filtered through a document that does not hold it",
                    field.name()
                );
            }
        }
    }
}
