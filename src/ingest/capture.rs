//! Change data capture from a host application's PostgreSQL: every committed row change of the
//! configured tables becomes an event, read from a logical replication slot (`pgoutput`)
//! through the SQL functions `pg_logical_slot_peek_binary_changes` and
//! `pg_replication_slot_advance` over an ordinary connection. (sqlx, which the service already
//! uses, has no replication protocol; the crates that speak it are forks or unmaintained. The
//! functions give the same changes, and let the slot move only when this service says so.)
//!
//! Exactly once: changes are peeked, not consumed; their events are committed with keys
//! derived from the commit's LSN and the change's place in its transaction
//! (`<name>:<commit LSN>:<index>`); only then is the slot advanced past them. A crash on either
//! side replays what was peeked and not yet confirmed, as replays. A rolled-back transaction is
//! never decoded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::pgoutput::{Datum, Lsn, Message, OldRow, Relation, format_lsn};
use super::{Backoff, default_tenant, retry_later, run_until_stopped};
use crate::log::{AuditLog, LogError};
use crate::model::payload::MAX_EXACT_INTEGER;
use crate::model::{NewEvent, RawEvent, TenantId};
use crate::store::Store;

/// `[capture]`: the databases whose changes are captured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postgres: Vec<PostgresCapture>,
}

/// `[[capture.postgres]]`: one host database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresCapture {
    /// The database's name in the log: its events' `source`.
    pub name: String,
    /// The host database (`wal_level = logical`; a role with `REPLICATION`).
    pub url: crate::config::DatabaseUrl,
    /// Created for `tables` when missing; an existing one is used as it is.
    pub publication: String,
    /// The logical replication slot (`pgoutput`), created when missing.
    pub slot: String,
    /// `schema.table` or `schema.*`.
    pub tables: Vec<String>,
    /// `schema.table.column`s never copied into an event.
    #[serde(default)]
    pub deny_columns: Vec<String>,
    /// `schema.table.column`s: for a table named here, only these are copied.
    #[serde(default)]
    pub allow_columns: Vec<String>,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Changes read at a time (whole transactions; a larger one is read whole).
    #[serde(default = "default_batch_changes")]
    pub batch_changes: u32,
    /// How long to wait when there is nothing new, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A warning is logged while the slot holds back more write-ahead log than this.
    #[serde(default = "default_lag_warning_bytes")]
    pub lag_warning_bytes: i64,
    /// Install on the captured tables a statement trigger that names the database role of
    /// each change (logical decoding does not carry it); needs the tables' owner.
    #[serde(default = "default_record_role")]
    pub record_role: bool,
}

fn default_record_role() -> bool {
    true
}

fn default_batch_changes() -> u32 {
    10_000
}
fn default_poll_interval_ms() -> u64 {
    200
}
fn default_lag_warning_bytes() -> i64 {
    1 << 30
}

/// The prefix of the `pg_logical_emit_message` whose JSON object gives its transaction's
/// changes their context (`user_identity`, `ip`, and anything else, kept as `context`).
pub const CONTEXT_PREFIX: &str = "auditor";

/// The prefix of the message the capture's trigger sends after each statement on a captured
/// table, holding the role that ran it (`current_user`): logical decoding does not carry it.
pub const ROLE_PREFIX: &str = "auditor-role";

/// Events committed per append.
const CHUNK_EVENTS: usize = 1_000;

/// How often the slot's lag is looked at.
const LAG_CHECK_EVERY: Duration = Duration::from_secs(30);

impl PostgresCapture {
    pub fn validate(&self) -> Result<(), String> {
        let identifier = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !identifier(&self.publication) || !identifier(&self.slot) {
            return Err(format!(
                "capture `{}`: publication and slot are lower-case identifiers (a-z, 0-9, _)",
                self.name
            ));
        }
        if self.name.is_empty() || self.tables.is_empty() {
            return Err("capture: name and tables must not be empty".into());
        }
        for pattern in &self.tables {
            match pattern.split_once('.') {
                Some((schema, table))
                    if identifier(schema) && (table == "*" || identifier(table)) => {}
                _ => {
                    return Err(format!(
                        "capture `{}`: `{pattern}` is not `schema.table` or `schema.*`",
                        self.name
                    ));
                }
            }
        }
        for column in self.deny_columns.iter().chain(&self.allow_columns) {
            if column.split('.').count() != 3 || column.split('.').any(str::is_empty) {
                return Err(format!(
                    "capture `{}`: `{column}` in deny_columns or allow_columns is not \
                     `schema.table.column`",
                    self.name
                ));
            }
        }
        TenantId::parse(&self.tenant).map_err(|e| format!("capture `{}`: {e}", self.name))?;
        Ok(())
    }

    fn captures(&self, schema: &str, table: &str) -> bool {
        self.tables
            .iter()
            .any(|pattern| match pattern.split_once('.') {
                Some((s, "*")) => s == schema,
                Some((s, t)) => s == schema && t == table,
                None => false,
            })
    }

    /// Whether `column` of `schema.table` may be copied into an event. The deny list matches
    /// without regard to case, so that a quoted `"Secret"` is not let through by
    /// `public.users.secret`: it errs towards copying less.
    fn copies(&self, schema: &str, table: &str, column: &str) -> bool {
        let full = format!("{schema}.{table}.{column}");
        if self
            .deny_columns
            .iter()
            .any(|denied| denied.eq_ignore_ascii_case(&full))
        {
            return false;
        }
        let prefix = format!("{schema}.{table}.");
        let restricted = self.allow_columns.iter().any(|c| c.starts_with(&prefix));
        !restricted || self.allow_columns.contains(&full)
    }
}

/// One committed transaction's changes, as read from the slot.
struct Transaction {
    commit_lsn: Lsn,
    end_lsn: Lsn,
    committed_at: OffsetDateTime,
    changes: Vec<Change>,
    context: Map<String, Value>,
}

struct Change {
    relation: u32,
    kind: ChangeKind,
    old: Option<Vec<Datum>>,
    new: Option<Vec<Datum>>,
    /// The database role whose statement made it, from the statement's role message.
    role: Option<String>,
}

#[derive(Clone, Copy)]
enum ChangeKind {
    Insert,
    Update,
    Delete,
    /// `TRUNCATE`: every row of the table, none of them named.
    Truncate,
}

/// Captures until `stop`, reconnecting with a back-off after any failure.
pub async fn run<S: Store>(log: AuditLog<S>, settings: PostgresCapture, stop: CancellationToken) {
    let what = format!("capture `{}`", settings.name);
    run_until_stopped(&what, &stop, |mut backoff| {
        let (log, settings, stop) = (&log, &settings, &stop);
        async move { (capture(log, settings, stop, &mut backoff).await, backoff) }
    })
    .await;
}

async fn capture<S: Store>(
    log: &AuditLog<S>,
    settings: &PostgresCapture,
    stop: &CancellationToken,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(settings.url.expose())
        .await?;
    ensure_publication(&pool, settings).await?;
    warn_of_unmatched_denials(&pool, settings).await?;
    // Before the slot: every change the slot will hold then has its role.
    if settings.record_role
        && let Err(error) = ensure_role_triggers(&pool, settings).await
    {
        tracing::warn!(
            capture = %settings.name, %error,
            "cannot install the triggers that name a change's database role; changes \
             without a context message are recorded as by the capture's name"
        );
    }
    ensure_slot(&pool, settings).await?;
    tracing::info!(capture = %settings.name, slot = %settings.slot, "capturing changes");
    let tenant = TenantId::parse(&settings.tenant).map_err(anyhow::Error::msg)?;
    let recorded_by = format!("capture:{}", settings.name);
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut primary_keys: HashMap<u32, Vec<String>> = HashMap::new();
    let mut lag_checked: Option<Instant> = None;
    while !stop.is_cancelled() {
        if lag_checked.is_none_or(|at| at.elapsed() >= LAG_CHECK_EVERY) {
            check_lag(&pool, settings).await;
            lag_checked = Some(Instant::now());
        }
        let transactions = peek(&pool, settings, &mut relations).await?;
        let Some(last) = transactions.last() else {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(settings.poll_interval_ms)) => {}
            }
            continue;
        };
        let end_lsn = last.end_lsn;
        for id in relations.keys() {
            if !primary_keys.contains_key(id) {
                primary_keys.insert(*id, primary_key(&pool, *id).await?);
            }
        }
        let tables = Tables {
            relations: &relations,
            primary_keys: &primary_keys,
        };
        let events: Vec<NewEvent> = transactions
            .iter()
            .flat_map(|transaction| events_of(log, settings, &tables, transaction))
            .collect();
        for chunk in events.chunks(CHUNK_EVENTS) {
            record_chunk(log, &tenant, &recorded_by, chunk).await?;
            metrics::counter!(crate::metrics::CAPTURE_CHANGES, "capture" => settings.name.clone())
                .increment(chunk.len() as u64);
        }
        sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
            .bind(&settings.slot)
            .bind(format_lsn(end_lsn))
            .execute(&pool)
            .await?;
        backoff.reset();
    }
    Ok(())
}

/// Commits `chunk`; an event the log refuses (which a row's content can make so, e.g. a key
/// longer than a field may be) is replaced by a `capture.unrecordable` event saying why, so that
/// the slot never stops at it.
async fn record_chunk<S: Store>(
    log: &AuditLog<S>,
    tenant: &TenantId,
    recorded_by: &str,
    chunk: &[NewEvent],
) -> anyhow::Result<()> {
    match log
        .record_in(tenant.clone(), recorded_by, chunk.to_vec())
        .await
    {
        Ok(_) => return Ok(()),
        Err(error) if retry_later(&error) => return Err(error.into()),
        Err(_) => {}
    }
    for event in chunk {
        match log
            .record_in(tenant.clone(), recorded_by, vec![event.clone()])
            .await
        {
            Ok(_) => {}
            Err(error) if retry_later(&error) => return Err(error.into()),
            Err(error) => {
                tracing::warn!(%error, "a captured change cannot be recorded; recording why");
                let substitute = unrecordable(event, &error)?;
                log.record_in(tenant.clone(), recorded_by, vec![substitute])
                    .await?;
            }
        }
    }
    Ok(())
}

fn unrecordable(event: &NewEvent, error: &LogError) -> anyhow::Result<NewEvent> {
    let data = serde_json::json!({
        "entity": event.entity,
        "reason": error.to_string(),
    });
    let raw = RawEvent {
        event_type: "capture.unrecordable".into(),
        user_identity: "capture".into(),
        action: None,
        entity: event.entity.clone(),
        entity_id: None,
        property: None,
        source: event.source.clone(),
        ip: None,
        outcome: Some(crate::model::Outcome::Failure),
        occurred_at: event.occurred_at,
        event_data: Some(serde_json::value::to_raw_value(&data)?),
        idempotency_key: event.idempotency_key.clone(),
    };
    NewEvent::parse(raw, &crate::model::Limits::default()).map_err(|e| anyhow::anyhow!("{e:?}"))
}

async fn ensure_publication(pool: &PgPool, settings: &PostgresCapture) -> anyhow::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&settings.publication)
            .fetch_one(pool)
            .await?;
    if exists {
        return Ok(());
    }
    // A table without a replica identity in a publication that publishes updates and deletes
    // makes the host's own UPDATEs and DELETEs on it fail: refuse rather than break the host.
    let unidentified: Vec<String> = sqlx::query_scalar(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
             (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))",
    )
    .fetch_all(pool)
    .await?;
    let unidentified: Vec<&String> = unidentified
        .iter()
        .filter(|name| {
            name.split_once('.')
                .is_some_and(|(schema, table)| settings.captures(schema, table))
        })
        .collect();
    if !unidentified.is_empty() {
        anyhow::bail!(
            "not creating publication `{}`: {} would then refuse the host's UPDATE and DELETE, \
             having no replica identity; give them a primary key or \
             `ALTER TABLE … REPLICA IDENTITY FULL`, or leave them out of `tables`",
            settings.publication,
            unidentified
                .iter()
                .map(|name| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (schemas, tables): (Vec<&String>, Vec<&String>) =
        settings.tables.iter().partition(|t| t.ends_with(".*"));
    let mut targets = Vec::new();
    if !tables.is_empty() {
        let names: Vec<&str> = tables.iter().map(|t| t.as_str()).collect();
        targets.push(format!("TABLE {}", names.join(", ")));
    }
    if !schemas.is_empty() {
        let names: Vec<&str> = schemas.iter().map(|t| t.trim_end_matches(".*")).collect();
        targets.push(format!("TABLES IN SCHEMA {}", names.join(", ")));
    }
    // The names were checked to be plain identifiers (`PostgresCapture::validate`).
    let statement = format!(
        "CREATE PUBLICATION {} FOR {}",
        settings.publication,
        targets.join(", ")
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(pool)
        .await?;
    tracing::info!(publication = %settings.publication, "created the publication");
    Ok(())
}

/// Warns of each `deny_columns` entry that names no column of the host: a misspelt entry
/// denies nothing.
async fn warn_of_unmatched_denials(
    pool: &PgPool,
    settings: &PostgresCapture,
) -> anyhow::Result<()> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name || '.' || column_name \
         FROM information_schema.columns",
    )
    .fetch_all(pool)
    .await?;
    for denied in &settings.deny_columns {
        if !columns.iter().any(|c| c.eq_ignore_ascii_case(denied)) {
            tracing::warn!(
                capture = %settings.name, column = %denied,
                "a deny_columns entry names no column of the host database"
            );
        }
    }
    Ok(())
}

/// Installs, on every table the capture covers, a statement trigger that sends the role running
/// the statement (`current_user`) as a transactional `ROLE_PREFIX` message, so that its changes
/// are recorded as by that role. Idempotent.
async fn ensure_role_triggers(pool: &PgPool, settings: &PostgresCapture) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION auditor_capture_role() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_logical_emit_message(true, '{ROLE_PREFIX}', current_user::text); \
         RETURN NULL; END $$"
    )))
    .execute(pool)
    .await?;
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await?;
    for (schema, table) in tables {
        if !settings.captures(&schema, &table) {
            continue;
        }
        let statement = format!(
            "CREATE OR REPLACE TRIGGER auditor_capture_role \
             AFTER INSERT OR UPDATE OR DELETE ON \"{}\".\"{}\" \
             FOR EACH STATEMENT EXECUTE FUNCTION auditor_capture_role()",
            schema.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await?;
    }
    Ok(())
}

async fn ensure_slot(pool: &PgPool, settings: &PostgresCapture) -> anyhow::Result<()> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(&settings.slot)
    .fetch_one(pool)
    .await?;
    if !exists {
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&settings.slot)
            .execute(pool)
            .await?;
        tracing::info!(slot = %settings.slot, "created the replication slot");
    }
    Ok(())
}

/// Logs how much write-ahead log the slot holds back (and sets `auditor_capture_slot_lag_bytes`),
/// warning past `lag_warning_bytes`: a slot that does not move keeps the host's WAL until its
/// disk fills.
async fn check_lag(pool: &PgPool, settings: &PostgresCapture) {
    let lag: Result<Option<i64>, _> = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&settings.slot)
    .fetch_one(pool)
    .await;
    if let Ok(Some(bytes)) = lag {
        metrics::gauge!(crate::metrics::CAPTURE_SLOT_LAG, "capture" => settings.name.clone())
            .set(bytes as f64);
    }
    match lag {
        Ok(Some(bytes)) if bytes > settings.lag_warning_bytes => tracing::warn!(
            capture = %settings.name, slot = %settings.slot, lag_bytes = bytes,
            "the replication slot holds back more WAL than capture.lag_warning_bytes"
        ),
        Ok(Some(bytes)) => {
            tracing::info!(capture = %settings.name, lag_bytes = bytes, "replication slot lag")
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "could not read the replication slot's lag"),
    }
}

/// The next committed transactions in the slot, whole, without consuming them.
async fn peek(
    pool: &PgPool,
    settings: &PostgresCapture,
    relations: &mut HashMap<u32, Relation>,
) -> anyhow::Result<Vec<Transaction>> {
    let rows = sqlx::query(
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, \
         'proto_version', '1', 'publication_names', $3, 'messages', 'true')",
    )
    .bind(&settings.slot)
    .bind(i32::try_from(settings.batch_changes).unwrap_or(i32::MAX))
    .bind(&settings.publication)
    .fetch_all(pool)
    .await?;
    let mut transactions = Vec::new();
    let mut open: Option<Transaction> = None;
    for row in rows {
        let data: Vec<u8> = row.try_get("data")?;
        match Message::parse(&data)? {
            Message::Begin { committed_at, .. } => {
                open = Some(Transaction {
                    commit_lsn: 0,
                    end_lsn: 0,
                    committed_at,
                    changes: Vec::new(),
                    context: Map::new(),
                });
            }
            Message::Commit {
                commit_lsn,
                end_lsn,
                committed_at,
            } => {
                if let Some(mut transaction) = open.take() {
                    transaction.commit_lsn = commit_lsn;
                    transaction.end_lsn = end_lsn;
                    transaction.committed_at = committed_at;
                    transactions.push(transaction);
                }
            }
            Message::Relation(relation) => {
                relations.insert(relation.id, relation);
            }
            Message::Insert { relation, new } => {
                push(&mut open, relation, ChangeKind::Insert, None, Some(new))
            }
            Message::Update { relation, old, new } => {
                let old = old.map(|old| known_values(relations, relation, old));
                push(&mut open, relation, ChangeKind::Update, old, Some(new));
            }
            Message::Delete { relation, old } => {
                let old = known_values(relations, relation, old);
                push(&mut open, relation, ChangeKind::Delete, Some(old), None);
            }
            Message::Logical {
                transactional: true,
                prefix,
                content,
            } if prefix == CONTEXT_PREFIX => {
                if let (Some(transaction), Ok(Value::Object(context))) =
                    (open.as_mut(), serde_json::from_slice(&content))
                {
                    transaction.context.extend(context);
                }
            }
            // Sent after each statement on a captured table (`ROLE_PREFIX`): its role made the
            // changes before it that have none yet.
            Message::Logical {
                transactional: true,
                prefix,
                content,
            } if prefix == ROLE_PREFIX => {
                if let (Some(transaction), Ok(role)) = (open.as_mut(), String::from_utf8(content)) {
                    for change in transaction.changes.iter_mut().rev() {
                        if change.role.is_some() {
                            break;
                        }
                        change.role = Some(role.clone());
                    }
                }
            }
            Message::Truncate { relations } => {
                for relation in relations {
                    push(&mut open, relation, ChangeKind::Truncate, None, None);
                }
            }
            Message::Logical { .. } | Message::Other(_) => {}
        }
    }
    Ok(transactions)
}

/// An old row's values as far as they were sent: of a key-only row, the columns outside the
/// replica identity are unknown (`Unchanged`, left out of the event), not null.
fn known_values(relations: &HashMap<u32, Relation>, relation: u32, old: OldRow) -> Vec<Datum> {
    if !old.key_only {
        return old.datums;
    }
    let columns = relations.get(&relation).map(|r| r.columns.as_slice());
    old.datums
        .into_iter()
        .enumerate()
        .map(|(i, datum)| match columns.and_then(|c| c.get(i)) {
            Some(column) if column.key => datum,
            _ => Datum::Unchanged,
        })
        .collect()
}

fn push(
    open: &mut Option<Transaction>,
    relation: u32,
    kind: ChangeKind,
    old: Option<Vec<Datum>>,
    new: Option<Vec<Datum>>,
) {
    if let Some(transaction) = open {
        transaction.changes.push(Change {
            relation,
            kind,
            old,
            new,
            role: None,
        });
    }
}

/// The primary key's columns of the table `relation` (its OID), in key order; none for a table
/// without one.
async fn primary_key(pool: &PgPool, relation: u32) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
         JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.n",
    )
    .bind(i64::from(relation))
    .fetch_all(pool)
    .await?)
}

/// What is known of the host's tables: as the slot describes them, and their primary keys.
struct Tables<'a> {
    relations: &'a HashMap<u32, Relation>,
    primary_keys: &'a HashMap<u32, Vec<String>>,
}

/// The events of one transaction's changes to the captured tables.
fn events_of<S: Store>(
    log: &AuditLog<S>,
    settings: &PostgresCapture,
    tables: &Tables<'_>,
    transaction: &Transaction,
) -> Vec<NewEvent> {
    let mut context = transaction.context.clone();
    let context_user = match context.remove("user_identity") {
        Some(Value::String(user)) if !user.trim().is_empty() => Some(user),
        _ => None,
    };
    let ip = match context.remove("ip") {
        Some(Value::String(ip)) => ip.parse().ok(),
        _ => None,
    };
    let mut events = Vec::new();
    for (index, change) in transaction.changes.iter().enumerate() {
        let Some(relation) = tables.relations.get(&change.relation) else {
            tracing::warn!(
                relation = change.relation,
                "a change to a table never described"
            );
            continue;
        };
        if !settings.captures(&relation.schema, &relation.table) {
            continue;
        }
        let row = |datums: &Option<Vec<Datum>>| {
            datums.as_ref().map(|datums| {
                let mut row = Map::new();
                for (column, datum) in relation.columns.iter().zip(datums) {
                    if !settings.copies(&relation.schema, &relation.table, &column.name)
                        || *datum == Datum::Unchanged
                    {
                        continue;
                    }
                    row.insert(column.name.clone(), value_of(column.type_oid, datum));
                }
                row
            })
        };
        let (old, new) = (row(&change.old), row(&change.new));
        // The primary key names the row; a denied column's value never leaves, even as a key.
        let key_source = change.new.as_ref().or(change.old.as_ref());
        let primary_key = tables
            .primary_keys
            .get(&change.relation)
            .map_or(&[][..], Vec::as_slice);
        let keys: Vec<String> = relation
            .columns
            .iter()
            .zip(key_source.into_iter().flatten())
            .filter(|(column, _)| primary_key.contains(&column.name))
            .filter(|(column, _)| settings.copies(&relation.schema, &relation.table, &column.name))
            .filter_map(|(_, datum)| match datum {
                Datum::Text(text) => Some(text.clone()),
                _ => None,
            })
            .collect();
        let entity_id = match keys.len() {
            0 => None,
            1 => keys.into_iter().next(),
            _ => Some(Value::from(keys).to_string()),
        };
        let property = changed_columns(relation, change);
        let (action, kind) = match change.kind {
            ChangeKind::Insert => ("create", "create"),
            ChangeKind::Update => ("update", "update"),
            ChangeKind::Delete => ("delete", "delete"),
            ChangeKind::Truncate => ("delete", "truncate"),
        };
        let mut data = Map::new();
        if let ChangeKind::Truncate = change.kind {
            data.insert("truncate".into(), Value::Bool(true));
        }
        data.insert("old".into(), old.map_or(Value::Null, Value::Object));
        data.insert("new".into(), new.map_or(Value::Null, Value::Object));
        if let Some(role) = &change.role {
            data.insert("role".into(), Value::from(role.as_str()));
        }
        // Who: the application's word for it, else the database role, else the database.
        let user_identity = context_user
            .clone()
            .or_else(|| change.role.clone())
            .unwrap_or_else(|| settings.name.clone());
        if !context.is_empty() {
            data.insert("context".into(), Value::Object(context.clone()));
        }
        let raw = RawEvent {
            event_type: format!("{}.{}.{kind}", relation.schema, relation.table),
            user_identity,
            action: crate::model::Action::parse(action),
            entity: Some(format!("{}.{}", relation.schema, relation.table)),
            entity_id,
            property: (!property.is_empty()).then_some(property),
            source: Some(settings.name.clone()),
            ip,
            outcome: None,
            occurred_at: Some(transaction.committed_at),
            event_data: serde_json::value::to_raw_value(&Value::Object(data)).ok(),
            idempotency_key: Some(format!(
                "{}:{}:{index}",
                settings.name,
                format_lsn(transaction.commit_lsn)
            )),
        };
        match log.parse(raw.clone()) {
            Ok(event) => events.push(event),
            Err(error) => {
                let placeholder = RawEvent {
                    entity_id: None,
                    property: None,
                    event_data: None,
                    ..raw
                };
                match log
                    .parse(placeholder)
                    .ok()
                    .and_then(|e| unrecordable(&e, &error).ok())
                {
                    Some(event) => events.push(event),
                    None => tracing::error!(%error, "a captured change cannot be recorded at all"),
                }
            }
        }
    }
    events
}

/// The columns a change touched: those whose value differs from the old row's when the old row
/// was sent (`REPLICA IDENTITY FULL`), else every column sent.
fn changed_columns(relation: &Relation, change: &Change) -> String {
    let names = relation.columns.iter().enumerate().filter(|(i, _)| {
        let new = change.new.as_ref().and_then(|row| row.get(*i));
        let old = change.old.as_ref().and_then(|row| row.get(*i));
        match (change.kind, old, new) {
            (ChangeKind::Update, Some(old), Some(new)) => old != new && *new != Datum::Unchanged,
            (_, _, Some(new)) => *new != Datum::Unchanged,
            (_, Some(old), None) => !matches!(old, Datum::Null | Datum::Unchanged),
            _ => false,
        }
    });
    names
        .map(|(_, column)| column.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A column's value as JSON: booleans and numbers a double holds exactly as themselves; numbers
/// it cannot hold (`numeric`, `bigint` beyond 2^53) and everything else as their text; `bytea`
/// as base64; `json` and `jsonb` as the JSON they hold when every number in it is exact (as
/// `event_data` takes numbers), else as their text.
fn value_of(type_oid: u32, datum: &Datum) -> Value {
    const BOOL: u32 = 16;
    const BYTEA: u32 = 17;
    const JSON: u32 = 114;
    const JSONB: u32 = 3802;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    let Datum::Text(text) = datum else {
        return Value::Null;
    };
    match type_oid {
        BOOL => Value::Bool(text == "t"),
        INT2 | INT4 | INT8 => match text.parse::<i64>() {
            Ok(n) if n.abs() <= MAX_EXACT_INTEGER => Value::from(n),
            _ => Value::from(text.as_str()),
        },
        FLOAT4 | FLOAT8 => crate::model::payload::exact_number(text)
            .map(Value::Number)
            .unwrap_or_else(|_| Value::from(text.as_str())),
        JSON | JSONB => serde_json::from_str::<Box<serde_json::value::RawValue>>(text)
            .ok()
            .and_then(|raw| crate::model::payload::parse_member(&raw, "column").ok())
            .unwrap_or_else(|| Value::from(text.as_str())),
        BYTEA => match text
            .strip_prefix("\\x")
            .and_then(|hex_digits| hex::decode(hex_digits).ok())
        {
            Some(bytes) => Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
            None => Value::from(text.as_str()),
        },
        _ => Value::from(text.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> PostgresCapture {
        PostgresCapture {
            name: "app".into(),
            url: crate::config::DatabaseUrl::new("postgres://host/app"),
            publication: "auditor".into(),
            slot: "auditor".into(),
            tables: vec!["public.*".into()],
            deny_columns: vec!["public.users.secret".into()],
            allow_columns: Vec::new(),
            tenant: "default".into(),
            batch_changes: 10,
            poll_interval_ms: 10,
            lag_warning_bytes: 1,
            record_role: true,
        }
    }

    #[test]
    fn json_columns_are_json_when_their_numbers_are_exact() {
        let text = |t: &str| Datum::Text(t.to_owned());
        assert_eq!(
            value_of(3802, &text(r#"{"f": 1.5, "tags": ["a"]}"#)),
            serde_json::json!({"f": 1.5, "tags": ["a"]})
        );
        assert_eq!(
            value_of(3802, &text(r#"{"big": 12345678901234567890}"#)),
            Value::from(r#"{"big": 12345678901234567890}"#),
            "a number a double cannot hold keeps the column as text"
        );
        assert_eq!(value_of(1700, &text("12.50")), Value::from("12.50"));
        assert_eq!(
            value_of(20, &text("9007199254740993")),
            Value::from("9007199254740993")
        );
        assert_eq!(value_of(17, &text("\\x0102")), Value::from("AQI="));
    }

    #[test]
    fn column_lists_name_schema_table_and_column() {
        assert!(capture().validate().is_ok());
        let unqualified = PostgresCapture {
            deny_columns: vec!["password_hash".into()],
            ..capture()
        };
        assert!(
            unqualified.validate().is_err(),
            "an entry that denies nothing"
        );
        let allowed = PostgresCapture {
            allow_columns: vec!["public.users".into()],
            ..capture()
        };
        assert!(allowed.validate().is_err());
    }

    #[test]
    fn the_deny_list_ignores_case_and_the_allow_list_restricts_its_tables() {
        let settings = PostgresCapture {
            allow_columns: vec!["public.orders.id".into()],
            ..capture()
        };
        assert!(!settings.copies("public", "users", "Secret"));
        assert!(settings.copies("public", "users", "name"));
        assert!(settings.copies("public", "orders", "id"));
        assert!(!settings.copies("public", "orders", "total"));
    }
}
