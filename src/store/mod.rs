//! Storage: one `Store` trait with domain types in and out, one implementation per database.
//! Only the writer calls [`Store::append`]; everything else reads.

use std::future::Future;

use std::collections::HashMap;

use crate::integrity::dropped::DroppedPrefix;
use crate::integrity::tiles::{TILE_WIDTH, TileId};
use crate::integrity::{Chained, Checkpoint, Digest};
use crate::model::session::SessionRecord;
use crate::model::token::{NewToken, TokenRecord};
use crate::model::user::{NewUser, Role, UserRecord};
use crate::model::{Event, EventId, EventQuery, Seq, Submission, TenantId};

mod assemble;
mod capture_positions;
pub mod pages;
pub mod postgres;
mod rows;
mod sessions;
pub mod sqlite;
mod tokens;
mod users;
pub mod users_watch;

pub use pages::Pages;
pub use postgres::PgStore;
pub use sqlite::{PostingOptions, SqliteStore};
pub use users_watch::UsersWatch;

/// A month partition of the events (PostgreSQL): its name, the end of its month (exclusive,
/// UTC), and the `seq` range of each tenant's events in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthPartition {
    pub name: String,
    pub end: time::OffsetDateTime,
    pub tenants: Vec<PartitionRange>,
}

/// A tenant's events in a partition: `seq`s `first..=through`, and the chain hash of the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub tenant: TenantId,
    pub first: Seq,
    pub through: Seq,
    pub through_hash: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is busy past its timeout: worth retrying later.
    #[error("the database is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("database error")]
    Other(#[source] anyhow::Error),
}

impl StoreError {
    /// Counts the error in `auditor_database_errors_total` and returns it.
    pub(crate) fn counted(self) -> Self {
        let kind = match self {
            Self::Unavailable(_) => "unavailable",
            _ => "other",
        };
        metrics::counter!(crate::metrics::DATABASE_ERRORS, "kind" => kind).increment(1);
        self
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Self::Unavailable(Box::new(error)).counted(),
            // Connection exceptions (08) and operator intervention such as a shutdown (57).
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57")) =>
            {
                Self::Unavailable(Box::new(error)).counted()
            }
            other => Self::Other(other.into()).counted(),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Other(error.into())
    }
}

/// A store's database connections at one moment (`auditor_database_connections`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connections {
    /// Open and running a statement or holding a transaction.
    pub in_use: usize,
    /// Open and waiting for work.
    pub idle: usize,
    /// The most this process opens.
    pub max: usize,
}

/// What became of one submission inside an appended batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// At least one event was newly recorded. `events` is in submission order and may include
    /// events replayed by idempotency key; `replayed[i]` says whether `events[i]` was.
    Created {
        events: Vec<Event>,
        replayed: Vec<bool>,
    },
    /// Every event carried an idempotency key that was already recorded with the same content.
    Replayed(Vec<Event>),
    /// An idempotency key was reused with different content; nothing of the submission was kept.
    KeyConflict(String),
    /// The submission was the record of an erasure that found nothing left to erase (another
    /// erasure, committed first, took it); nothing was recorded.
    NothingErased,
}

pub trait Store: Clone + Send + Sync + 'static {
    /// Applies pending migrations.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Versions of embedded migrations not yet applied to the database.
    fn pending_migrations(&self) -> impl Future<Output = Result<Vec<i64>, StoreError>> + Send;

    /// Cheap round trip, for readiness.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Housekeeping the backend needs to keep accepting appends, run at start and then every
    /// [`MAINTENANCE_INTERVAL`]: PostgreSQL creates the `events` partitions of the months ahead.
    /// Idempotent, and safe to run from several instances at once. Nothing to do on SQLite.
    fn maintain(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Appends submissions in order, each all-or-nothing, in one transaction: assigns `seq`,
    /// commit time and chain hashes while holding each tenant's chain head. Returns one outcome
    /// per submission only after the transaction committed.
    ///
    /// The commit time (`recorded_at`, one per batch) is the clock's, read once the chain heads
    /// are held, or the latest `recorded_at` of a tenant the batch appends to if that is later:
    /// it never decreases within a tenant's log, whatever the clocks of this or other instances
    /// do.
    fn append(
        &self,
        batch: &[Submission],
    ) -> impl Future<Output = Result<Vec<Appended>, StoreError>> + Send {
        self.append_with(batch, None)
    }

    /// [`Store::append`] with `clock` standing in for the clock's reading (converted to UTC and
    /// truncated to microseconds, as stored). The service always uses the clock; this is for
    /// tests (a clock stepped back, a month without a partition) and tools.
    fn append_at(
        &self,
        batch: &[Submission],
        clock: time::OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<Appended>, StoreError>> + Send {
        self.append_with(batch, Some(clock))
    }

    /// [`Store::append`] with the clock's reading given (`Some`) or read by the store (`None`):
    /// the one method each backend implements for both.
    fn append_with(
        &self,
        batch: &[Submission],
        clock: Option<time::OffsetDateTime>,
    ) -> impl Future<Output = Result<Vec<Appended>, StoreError>> + Send;

    fn get(
        &self,
        tenant: &TenantId,
        id: EventId,
    ) -> impl Future<Output = Result<Option<Event>, StoreError>> + Send;

    /// Up to `query.fetch_limit()` events matching the query, in its order.
    fn query(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// The database's plan for [`Store::query`], one line per step, for checking that a filter
    /// is served by an index.
    fn explain(
        &self,
        tenant: &TenantId,
        query: &EventQuery,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Events of a tenant with `seq > after`, in `seq` order: the log as a stream, for verify.
    fn scan(
        &self,
        tenant: &TenantId,
        after: Seq,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// This process's connections to the database now.
    fn connections(&self) -> Connections;

    /// Every tenant with events, a chain head or a checkpoint. Cheap on any log size: the
    /// events are walked by their primary key one tenant at a time (a loose index scan).
    fn tenants(&self) -> impl Future<Output = Result<Vec<TenantId>, StoreError>> + Send;

    /// Where the tenant's log ends now, if it has begun.
    fn head(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Option<Chained>, StoreError>> + Send;

    /// The named hash tiles that are full (256 hashes each, stored once when an append filled
    /// them); the others are left out. Partial tiles are the head's ([`Chained::frontier`]).
    fn full_tiles(
        &self,
        tenant: &TenantId,
        ids: &[TileId],
    ) -> impl Future<Output = Result<HashMap<TileId, Vec<Digest>>, StoreError>> + Send;

    /// Stores a checkpoint; one already stored for the same tenant and size, or naming the same
    /// predecessor, wins (this one is then not stored).
    fn add_checkpoint(
        &self,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The checkpoint of exactly this size, or the latest when `tree_size` is `None`.
    fn checkpoint(
        &self,
        tenant: &TenantId,
        tree_size: Option<u64>,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;

    /// All of a tenant's checkpoints, smallest first.
    fn checkpoints(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Vec<Checkpoint>, StoreError>> + Send;

    /// The prefix of the tenant's log whose rows went with a dropped month partition
    /// ([`Store::drop_partition`]), the latest if several: its rows start after it. `None` on
    /// SQLite, whose logs always start at `seq` 1.
    fn dropped_prefix(
        &self,
        _tenant: &TenantId,
    ) -> impl Future<Output = Result<Option<DroppedPrefix>, StoreError>> + Send {
        std::future::ready(Ok(None))
    }

    /// The oldest month partition of the events, if it ended by `ended_by`, with the `seq`
    /// range of each tenant's events in it. `None` on SQLite, which has no partitions.
    fn oldest_partition(
        &self,
        _ended_by: time::OffsetDateTime,
    ) -> impl Future<Output = Result<Option<MonthPartition>, StoreError>> + Send {
        std::future::ready(Ok(None))
    }

    /// Drops `partition` (as [`Store::oldest_partition`] read it) in one transaction that
    /// appends `records`, one `audit.dropped` event per tenant in it, and stores each tenant's
    /// new dropped prefix from `prefixes`. `Conflict` if the partition's ranges changed since
    /// they were read; nothing is then dropped.
    fn drop_partition(
        &self,
        _partition: &MonthPartition,
        _prefixes: &[(TenantId, DroppedPrefix)],
        _records: &[Submission],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(Err(StoreError::Other(anyhow::anyhow!(
            "this backend keeps its events in one table, with no partitions to drop"
        ))))
    }

    /// Creates a user; `Conflict` if the name is taken.
    fn add_user(&self, user: &NewUser) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn find_user(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<UserRecord>, StoreError>> + Send;

    fn list_users(&self) -> impl Future<Output = Result<Vec<UserRecord>, StoreError>> + Send;

    /// Removes a user; `NotFound` if there is none by that name.
    fn remove_user(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many users of `role` act in every tenant (`*`).
    fn count_users_with_role(
        &self,
        role: Role,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Stores a token; `Conflict` if the name is taken (by a revoked token too).
    fn add_token(&self, token: &NewToken) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The token whose secret hashes to `secret_hash`, revoked and expired ones included.
    fn find_token(
        &self,
        secret_hash: &Digest,
    ) -> impl Future<Output = Result<Option<TokenRecord>, StoreError>> + Send;

    /// Every token, by name.
    fn list_tokens(&self) -> impl Future<Output = Result<Vec<TokenRecord>, StoreError>> + Send;

    /// Marks the token revoked at `at` (a token revoked before keeps its first time);
    /// `NotFound` if there is none by that name.
    fn revoke_token(
        &self,
        name: &str,
        at: time::OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stores a web viewer session (its secret already hashed).
    fn add_session(
        &self,
        session: &SessionRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The session whose secret hashes to `secret_hash`, expired or not.
    fn find_session(
        &self,
        secret_hash: &Digest,
    ) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send;

    /// Records that the session was used at `at` (never moving its time back); a session that
    /// is gone is no error.
    fn touch_session(
        &self,
        secret_hash: &Digest,
        at: time::OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the session (sign-out); one that is gone already is no error.
    fn remove_session(
        &self,
        secret_hash: &Digest,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the sessions last used before `idle_before` or begun before `begun_before`,
    /// returning how many.
    fn remove_expired_sessions(
        &self,
        idle_before: time::OffsetDateTime,
        begun_before: time::OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Where the change capture `capture` last confirmed its slot: `(slot, LSN)`, the LSN as
    /// a number; `None` before its first confirmation.
    fn capture_position(
        &self,
        capture: &str,
    ) -> impl Future<Output = Result<Option<(String, i64)>, StoreError>> + Send;

    /// Records that `capture` is about to confirm `slot` up to `lsn` (committed before the
    /// slot is advanced, so the slot is never past it but by someone else's hand).
    fn set_capture_position(
        &self,
        capture: &str,
        slot: &str,
        lsn: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Starts watching the users table, until `shutdown`, for changes made by anyone: this
    /// process, another instance, `auditor user` in another process, SQL by hand. What was read
    /// from the table stays true while the returned watch's generation does not change (see
    /// [`UsersWatch`]). Spawns a task; call it from within the Tokio runtime.
    fn watch_users(&self, shutdown: tokio_util::sync::CancellationToken) -> UsersWatch;
}

/// How often the server runs [`Store::maintain`] after start.
pub const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Runs [`Store::maintain`] every [`MAINTENANCE_INTERVAL`] until `shutdown`; a failure is logged
/// and retried on the next tick (appends create a missing partition themselves meanwhile).
pub fn spawn_maintenance<S: Store>(
    store: S,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: the server ran it before starting
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = store.maintain().await {
                tracing::warn!(error = %error, "store maintenance failed; will retry");
            }
        }
    })
}

/// [`Store::tenants`]: the same statement on both backends.
const TENANTS: &str = "WITH RECURSIVE logged(tenant) AS ( \
         SELECT MIN(tenant) FROM events \
         UNION ALL \
         SELECT (SELECT MIN(tenant) FROM events WHERE tenant > logged.tenant) \
         FROM logged WHERE logged.tenant IS NOT NULL) \
     SELECT tenant FROM logged WHERE tenant IS NOT NULL \
     UNION SELECT tenant FROM chain_heads UNION SELECT tenant FROM checkpoints ORDER BY 1";

/// A stored value that does not decode into the domain type: the database was altered by hand.
fn corrupt(column: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Other(anyhow::anyhow!("stored {column} is invalid: {detail}"))
}

fn decode_frontier(seq: i64, bytes: &[u8]) -> Result<crate::integrity::Frontier, StoreError> {
    u64::try_from(seq)
        .ok()
        .and_then(|size| crate::integrity::Frontier::from_bytes(size, bytes))
        .ok_or_else(|| corrupt("chain_heads.partial_tiles", "does not match the tree size"))
}

/// A stored full tile: 256 hashes of 32 bytes.
fn decode_tile(bytes: &[u8]) -> Result<Vec<Digest>, StoreError> {
    if bytes.len() != TILE_WIDTH as usize * 32 {
        return Err(corrupt("tiles.hashes", "not 256 hashes"));
    }
    Ok(bytes
        .chunks_exact(32)
        .filter_map(Digest::from_slice)
        .collect())
}

/// `checkpoints.predecessor_size` of a checkpoint being stored: its predecessor's tree size, or
/// 0 for a tenant's first (unique per tenant, so one checkpoint follows each).
fn predecessor_size(checkpoint: &Checkpoint) -> i64 {
    checkpoint.predecessor().map_or(0, |(size, _)| size as i64)
}

/// A full tile's stored form.
fn encode_tile(hashes: &[Digest]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.0).collect()
}

fn decode_role(text: &str) -> Result<Role, StoreError> {
    Role::parse(text).ok_or_else(|| corrupt("role", text))
}

/// Which implementation a database URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
#[error("unsupported database URL `{0}`: use sqlite://path/to/file.db or postgres://…")]
pub struct UnsupportedUrl(String);

impl Backend {
    pub fn of(url: &str) -> Result<Self, UnsupportedUrl> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            let scheme = url.split("://").next().unwrap_or_default();
            Err(UnsupportedUrl(format!("{scheme}://…")))
        }
    }
}

/// Opens the store a URL names and runs `$body` with it bound to `$store`, monomorphised per
/// backend (static dispatch, no boxing). Errors convert with `?` in the caller.
#[macro_export]
macro_rules! with_store {
    ($url:expr, $max_connections:expr, |$store:ident| $body:expr) => {{
        let url: &str = $url;
        match $crate::store::Backend::of(url)? {
            $crate::store::Backend::Sqlite => {
                let $store = $crate::store::SqliteStore::connect(url, $max_connections).await?;
                $body
            }
            $crate::store::Backend::Postgres => {
                let $store = $crate::store::PgStore::connect(url, $max_connections).await?;
                $body
            }
        }
    }};
}
