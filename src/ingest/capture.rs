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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool, Row};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::pgoutput::{Datum, Lsn, Message, OldRow, Relation, format_lsn, parse_lsn};
use super::{Backoff, Misconfigured, default_tenant, retry_later, run_until_stopped};
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

impl CaptureSettings {
    /// Each capture valid, and no two that would take each other's changes: two on one slot
    /// each confirm what the other has not recorded, and two of one name derive the same keys.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        let mut slots = std::collections::HashSet::new();
        for capture in &self.postgres {
            capture.validate()?;
            if !names.insert(&capture.name) {
                return Err(format!(
                    "capture: the name `{}` is given to two captures; each names its own \
                     database",
                    capture.name
                ));
            }
            if !slots.insert((capture.url.expose(), &capture.slot)) {
                return Err(format!(
                    "capture `{}`: slot `{}` of that database is another capture's too; each \
                     needs its own",
                    capture.name, capture.slot
                ));
            }
        }
        Ok(())
    }
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

/// The prefix of the messages the capture's event triggers send before and after each `ALTER
/// PUBLICATION`, holding each publication's state then, and who ran it: a publication
/// narrowed and restored between two looks would otherwise leave changes out without a trace.
pub const PUBLICATION_PREFIX: &str = "auditor-publication";

/// Events committed per append.
const CHUNK_EVENTS: usize = 1_000;

/// How often the slot's lag is looked at.
const LAG_CHECK_EVERY: Duration = Duration::from_secs(30);

/// How often the host is looked at for tables created since that `tables` matches.
const PUBLICATION_SYNC_EVERY: Duration = Duration::from_secs(5);

/// How often, at most, a quiet slot is moved up to the host's current WAL position.
const QUIET_ADVANCE_EVERY: Duration = Duration::from_secs(1);

/// How often a capture standing by tries again to claim its slot.
const CLAIM_RETRY_EVERY: Duration = Duration::from_secs(5);

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
        // Any other scheme (a MySQL URL, say) would be read as PostgreSQL's defaults.
        let url = self.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!(
                "capture `{}`: url must be a PostgreSQL URL (postgres://…); it is `{}`",
                self.name, self.url
            ));
        }
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .map_err(|error| {
                format!(
                    "capture `{}`: url `{}` is not a PostgreSQL URL: {error}",
                    self.name, self.url
                )
            })?;
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
        if self.denies(schema, table, column) {
            return false;
        }
        let full = format!("{schema}.{table}.{column}");
        let prefix = format!("{schema}.{table}.");
        let restricted = self.allow_columns.iter().any(|c| {
            c.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
        });
        !restricted
            || self
                .allow_columns
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(&full))
    }

    /// Whether `deny_columns` names the column (without regard to case).
    fn denies(&self, schema: &str, table: &str, column: &str) -> bool {
        let full = format!("{schema}.{table}.{column}");
        self.deny_columns
            .iter()
            .any(|denied| denied.eq_ignore_ascii_case(&full))
    }
}

/// One committed transaction's changes, as read from the slot.
struct Transaction {
    commit_lsn: Lsn,
    end_lsn: Lsn,
    committed_at: OffsetDateTime,
    changes: Vec<Change>,
    /// The context messages so far, merged: each change takes the context as it stood when
    /// the change was made, so a message applies to the changes after it only.
    context: Arc<Context>,
    /// What this transaction did to the publication that leaves changes out (from the
    /// `PUBLICATION_PREFIX` messages of [`ensure_publication_trace`]).
    publication_narrowed: Vec<Value>,
    /// The publication as the `ALTER PUBLICATION` being run found it.
    publication_before: Option<Value>,
}

/// What a transaction's context messages gave, as of some change: who and from where, the
/// other fields the log takes, and why any were refused.
#[derive(Debug, Clone, Default)]
struct Context {
    user_identity: Option<String>,
    ip: Option<std::net::IpAddr>,
    /// The other fields, recorded as `event_data.context`.
    fields: Map<String, Value>,
    /// Each refusal, naming its message (1 for the transaction's first) and field.
    refused: Vec<String>,
    messages: usize,
}

impl Context {
    /// This context with the next message applied. Its fields override the earlier ones; a
    /// field it gives that the log refuses clears the earlier value too (the message meant to
    /// replace it), so a refused `user_identity` falls back to the role, never to an earlier
    /// message's user. Each member is read under `event_data`'s contract (exact numbers, no
    /// U+0000, bounded depth); a key given twice is refused, since which was meant is unknown.
    fn with_message(&self, content: &[u8]) -> Self {
        let mut next = self.clone();
        next.messages += 1;
        let mut refusals = Vec::new();
        let members = match serde_json::from_slice::<Members>(content) {
            Ok(Members(members)) => members,
            Err(error) => {
                refusals.push(if error.is_data() {
                    "not a JSON object".to_owned()
                } else {
                    format!("not JSON ({error})")
                });
                Vec::new()
            }
        };
        let mut refuse = |what: String| refusals.push(what);
        let mut seen = HashMap::new();
        for (name, _) in &members {
            *seen.entry(name.clone()).or_insert(0usize) += 1;
        }
        let mut accepted: Vec<(String, Result<Value, String>)> = Vec::new();
        for (name, raw) in members {
            let path = format!("context.{name}");
            let value = if seen[&name] > 1 {
                if accepted.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                Err(format!("{path}: given more than once"))
            } else if name.contains('\0') {
                Err("context: a key holds U+0000".to_owned())
            } else {
                crate::model::payload::parse_member(&raw, &path).map_err(|error| error.to_string())
            };
            accepted.push((name, value));
        }
        for (name, value) in accepted {
            match (name.as_str(), value) {
                ("user_identity", Ok(Value::String(user))) if !user.trim().is_empty() => {
                    next.user_identity = Some(user);
                }
                ("user_identity", Ok(Value::Null)) => next.user_identity = None,
                ("user_identity", Ok(other)) => {
                    next.user_identity = None;
                    refuse(format!("context.user_identity: {other} is not a name"));
                }
                ("ip", Ok(Value::Null)) => next.ip = None,
                ("ip", Ok(value)) => {
                    next.ip = value.as_str().and_then(|ip| ip.parse().ok());
                    if next.ip.is_none() {
                        refuse(format!("context.ip: {value} is not an address"));
                    }
                }
                ("user_identity", Err(why)) => {
                    next.user_identity = None;
                    refuse(why);
                }
                ("ip", Err(why)) => {
                    next.ip = None;
                    refuse(why);
                }
                (_, Ok(value)) => {
                    next.fields.insert(name, value);
                }
                (_, Err(why)) => {
                    next.fields.remove(&name);
                    refuse(why);
                }
            }
        }
        let message = next.messages;
        next.refused.extend(
            refusals
                .into_iter()
                .map(|why| storable(format!("message {message}: {why}"))),
        );
        next
    }
}

/// A JSON object's members in their order, repeated keys kept (a map would keep one).
struct Members(Vec<(String, Box<serde_json::value::RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

struct Change {
    /// The table as the slot described it when the change was decoded (a later description
    /// in the same read may differ: a key changed since).
    relation: Arc<Relation>,
    kind: ChangeKind,
    old: Option<Vec<Datum>>,
    new: Option<Vec<Datum>>,
    /// The database role whose statement made it, from the statement's role message.
    role: Option<String>,
    /// The transaction's context as it stood when the change was made.
    context: Arc<Context>,
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
    let mut claim = sqlx::PgConnection::connect(settings.url.expose()).await?;
    if !claim_slot(&mut claim, settings, stop).await? {
        return Ok(());
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(settings.url.expose())
        .await?;
    let tenant = TenantId::parse(&settings.tenant).map_err(anyhow::Error::msg)?;
    let recorded_by = format!("capture:{}", settings.name);
    let gaps = Gaps {
        log,
        settings,
        tenant: &tenant,
        recorded_by: &recorded_by,
    };
    let slot_existed = slot_exists(&pool, settings).await?;
    let mut warned = HashSet::new();
    let mut published = HashSet::new();
    // A table added to the publication while the slot exists missed what came before.
    let record_gaps = slot_existed.then_some(&gaps);
    sync_publication(
        &pool,
        settings,
        &mut warned,
        &mut published,
        false,
        record_gaps,
    )
    .await?;
    check_publication(&pool, settings).await?;
    warn_of_unmatched_denials(&pool, settings).await?;
    // Before the slot, as the role triggers: every change to the publication it holds is told.
    ensure_publication_trace(&pool, settings).await?;
    // Before the slot: every change the slot will hold then has its role.
    if settings.record_role {
        let tables = published_tables(&pool, settings).await?;
        install_role_triggers(&pool, settings, &tables).await;
    }
    if slot_existed {
        check_slot_position(log, &pool, settings, &gaps).await?;
    } else {
        record_gap(log, &pool, settings, &tenant, &recorded_by).await?;
        let created = create_slot(&pool, settings).await?;
        if let Some(lsn) = parse_lsn(&created) {
            log.set_capture_position(&settings.name, &settings.slot, lsn)
                .await?;
        }
    }
    tracing::info!(capture = %settings.name, slot = %settings.slot, "capturing changes");
    let mut relations: HashMap<u32, Arc<Relation>> = HashMap::new();
    let mut full_row_keys: HashMap<u32, (Arc<Relation>, Vec<String>)> = HashMap::new();
    let mut lag_checked: Option<Instant> = None;
    // Where an empty peek last moved the slot.
    let mut quiet_until: Lsn = 0;
    let mut quiet_advanced = Instant::now() - QUIET_ADVANCE_EVERY;
    let mut synced = Instant::now();
    while !stop.is_cancelled() {
        if lag_checked.is_none_or(|at| at.elapsed() >= LAG_CHECK_EVERY) {
            check_lag(&pool, settings).await;
            lag_checked = Some(Instant::now());
        }
        if synced.elapsed() >= PUBLICATION_SYNC_EVERY {
            still_claimed(&mut claim).await?;
            let added = sync_publication(
                &pool,
                settings,
                &mut warned,
                &mut published,
                true,
                Some(&gaps),
            )
            .await?;
            // Changed while running, it may already have left changes out since the last look.
            if let Err(error) = check_publication(&pool, settings).await {
                if error.downcast_ref::<Misconfigured>().is_some() {
                    gaps.record_publication_changed(&pool, &error.to_string())
                        .await?;
                }
                return Err(error);
            }
            if settings.record_role {
                install_role_triggers(&pool, settings, &added).await;
            }
            synced = Instant::now();
        }
        let (transactions, upto) = peek(&pool, settings, &mut relations).await?;
        let Some(last) = transactions.last() else {
            // Nothing this capture reads committed before `upto`: the slot moves there, or it
            // would hold back (and decode again at every poll) the WAL of everything else.
            // At most once a second: each records the position in the log's database too.
            if upto > quiet_until && quiet_advanced.elapsed() >= QUIET_ADVANCE_EVERY {
                still_claimed(&mut claim).await?;
                advance(log, &pool, settings, upto).await?;
                quiet_until = upto;
                quiet_advanced = Instant::now();
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(settings.poll_interval_ms)) => {}
            }
            continue;
        };
        let end_lsn = last.end_lsn;
        // Read again whenever the slot describes the table anew (its columns changed).
        let full_rows = transactions
            .iter()
            .flat_map(|t| &t.changes)
            .map(|change| &change.relation)
            .filter(|relation| relation.replica_identity == b'f');
        for relation in full_rows {
            if full_row_keys
                .get(&relation.id)
                .is_none_or(|(seen, _)| seen != relation)
            {
                let keys = primary_key(&pool, relation.id).await?;
                full_row_keys.insert(relation.id, (relation.clone(), keys));
            }
        }
        let tables = Tables {
            full_row_keys: &full_row_keys,
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
        still_claimed(&mut claim).await?;
        advance(log, &pool, settings, end_lsn).await?;
        backoff.reset();
    }
    Ok(())
}

/// Fails unless the claim's connection, and so its lock on the slot, is still there: checked
/// before each confirmation, so that a capture whose session was ended (and whose slot another
/// may have taken since) stops before confirming what that one reads.
async fn still_claimed(claim: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT 1").execute(claim).await?;
    Ok(())
}

/// Confirms the slot up to `lsn`: the host may recycle the WAL before it. The position is
/// recorded in the log's database first, so that the slot is past it only by another's hand.
async fn advance<S: Store>(
    log: &AuditLog<S>,
    pool: &PgPool,
    settings: &PostgresCapture,
    lsn: Lsn,
) -> anyhow::Result<()> {
    log.set_capture_position(&settings.name, &settings.slot, lsn)
        .await?;
    sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
        .bind(&settings.slot)
        .bind(format_lsn(lsn))
        .execute(pool)
        .await?;
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
        "change": event.event_type,
        "reason": storable(error.to_string()),
    });
    let raw = RawEvent {
        event_type: "capture.unrecordable".into(),
        user_identity: format!("capture:{}", event.source.as_deref().unwrap_or_default()),
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

/// A refusal's text as the log may keep it. It may quote what was refused, such as a key
/// holding U+0000, which the log refuses everywhere: the record of the refusal would then be
/// refused too.
fn storable(text: String) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// A table of the host: its schema, its name, and whether it has a replica identity (without
/// one, a publication that holds it makes the host's own UPDATEs and DELETEs on it fail).
struct HostTable {
    schema: String,
    name: String,
    identified: bool,
}

impl HostTable {
    fn qualified(&self) -> String {
        format!(
            "\"{}\".\"{}\"",
            self.schema.replace('"', "\"\""),
            self.name.replace('"', "\"\"")
        )
    }

    fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Makes the publication hold every table of the host that `tables` matches, table by table
/// (never `FOR TABLES IN SCHEMA`, which would take in a later table without a replica identity
/// and so break the host's writes to it): creates it when missing, adds a matching table
/// created since. Returns the tables added. A table named in `tables` that lacks a replica
/// identity is an error at the start (`started` false); one a pattern matches is left out with a warning, as is a name that
/// matches no table (each warned of once, through `warned`). A publication `FOR ALL TABLES` is
/// used as it is.
async fn sync_publication<S: Store>(
    pool: &PgPool,
    settings: &PostgresCapture,
    warned: &mut HashSet<String>,
    seen: &mut HashSet<(String, String)>,
    started: bool,
    gaps: Option<&Gaps<'_, S>>,
) -> anyhow::Result<Vec<(String, String)>> {
    let host: Vec<HostTable> = sqlx::query_as::<_, (String, String, bool)>(
        "SELECT n.nspname::text, c.relname::text, \
           NOT (c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS \
             (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(schema, name, identified)| HostTable {
        schema,
        name,
        identified,
    })
    .collect();
    let matching: Vec<&HostTable> = host
        .iter()
        .filter(|t| settings.captures(&t.schema, &t.name))
        .collect();
    for named in settings.tables.iter().filter(|t| !t.ends_with(".*")) {
        if !host.iter().any(|t| t.display() == *named) && warned.insert(named.clone()) {
            tracing::warn!(
                capture = %settings.name, table = %named,
                "a table named in `tables` does not exist on the host; it is captured once it is \
                 created (within seconds of it)"
            );
        }
    }
    let unidentified: Vec<&&HostTable> = matching.iter().filter(|t| !t.identified).collect();
    let named: Vec<String> = unidentified
        .iter()
        .filter(|t| settings.tables.contains(&t.display()))
        .map(|t| t.display())
        .collect();
    if !named.is_empty() && !started {
        return Err(Misconfigured(format!(
            "not publishing {}: without a replica identity the host's UPDATE and DELETE on them \
             would fail; give them a primary key or `ALTER TABLE … REPLICA IDENTITY FULL`, or \
             leave them out of `tables`",
            named.join(", ")
        ))
        .into());
    }
    // With no publication yet, this is empty.
    let published: HashSet<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
    )
    .bind(&settings.publication)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    // Once capturing, a named table created without one is passed over like any other: the
    // others' changes go on being captured.
    for table in unidentified {
        if !warned.insert(table.display()) {
            continue;
        }
        if published.contains(&(table.schema.clone(), table.name.clone())) {
            tracing::warn!(
                capture = %settings.name, table = %table.display(),
                "a captured table has lost its replica identity (its primary key dropped?): \
                 the host's UPDATE and DELETE on it fail until it has one again; its inserts \
                 are still captured; give it a primary key or `REPLICA IDENTITY FULL`"
            );
        } else {
            tracing::warn!(
                capture = %settings.name, table = %table.display(),
                "not capturing a matching table without a replica identity: publishing it would \
                 make the host's UPDATE and DELETE on it fail; give it a primary key or \
                 `REPLICA IDENTITY FULL`"
            );
        }
    }
    let wanted: Vec<&HostTable> = matching.into_iter().filter(|t| t.identified).collect();
    let publication: Option<bool> =
        sqlx::query_scalar("SELECT puballtables FROM pg_publication WHERE pubname = $1")
            .bind(&settings.publication)
            .fetch_optional(pool)
            .await?;
    let added: Vec<&HostTable> = match publication {
        Some(true) => return Ok(Vec::new()),
        None => {
            let list: Vec<String> = wanted.iter().map(|t| t.qualified()).collect();
            // The publication's name was checked to be a plain identifier (`validate`).
            let statement = if list.is_empty() {
                format!("CREATE PUBLICATION {}", settings.publication)
            } else {
                format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    settings.publication,
                    list.join(", ")
                )
            };
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(pool)
                .await?;
            tracing::info!(publication = %settings.publication, tables = list.len(), "created the publication");
            seen.extend(wanted.iter().map(|t| (t.schema.clone(), t.name.clone())));
            wanted
        }
        Some(false) => {
            // A table renamed or moved out of what `tables` matches stays in the publication,
            // but its changes are no longer captured: said once for each.
            for (schema, table) in &published {
                let name = format!("{schema}.{table}");
                if !settings.captures(schema, table) && warned.insert(format!("unmatched {name}")) {
                    tracing::warn!(
                        capture = %settings.name, table = %name,
                        "a table of the publication is not matched by `tables` (renamed or \
                         moved since it was added, or put there by someone else): its changes \
                         are not captured"
                    );
                    if let Some(gaps) = gaps {
                        gaps.record_unmatched(&name).await?;
                    }
                }
            }
            // Put in the publication by someone else since the last look: what it held, and
            // its changes before, were not captured; its role trigger is installed as for one
            // this capture adds.
            let mut appeared = Vec::new();
            for table in &wanted {
                let key = (table.schema.clone(), table.name.clone());
                if started && published.contains(&key) && !seen.contains(&key) {
                    if let Some(gaps) = gaps {
                        gaps.record_table(pool, table).await?;
                    }
                    appeared.push(*table);
                }
            }
            seen.retain(|table| published.contains(table));
            seen.extend(published.iter().cloned());
            let missing: Vec<&HostTable> = wanted
                .into_iter()
                .filter(|t| !published.contains(&(t.schema.clone(), t.name.clone())))
                .collect();
            for table in &missing {
                if let Some(gaps) = gaps {
                    gaps.record_table(pool, table).await?;
                }
                let statement = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    settings.publication,
                    table.qualified()
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(pool)
                    .await?;
                tracing::info!(
                    publication = %settings.publication, table = %table.display(),
                    "added a table to the publication"
                );
                seen.insert((table.schema.clone(), table.name.clone()));
            }
            missing.into_iter().chain(appeared).collect()
        }
    };
    Ok(added
        .into_iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect())
}

/// Takes the slot for this capture alone, for as long as `claim` stays open: a session
/// advisory lock on the host named after the slot. Another capture reading it (another
/// `auditor` instance with the same configuration, or a second capture of this database under
/// another spelling of its URL) holds it: this one stands by until that one stops, since two
/// would each confirm changes the other has not recorded. False when `stop` came first.
async fn claim_slot(
    claim: &mut sqlx::PgConnection,
    settings: &PostgresCapture,
    stop: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut told = false;
    loop {
        let claimed: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(format!("auditor capture slot {}", settings.slot))
                .fetch_one(&mut *claim)
                .await?;
        if claimed {
            return Ok(true);
        }
        if !told {
            tracing::info!(
                capture = %settings.name, slot = %settings.slot,
                "another capture reads this slot (another auditor instance, or another capture \
                 of this database); standing by until it stops"
            );
            told = true;
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(false),
            () = tokio::time::sleep(CLAIM_RETRY_EVERY) => {}
        }
    }
}

/// Refuses a publication that leaves changes of the captured tables out: a `publish` option
/// without one of insert, update, delete and truncate, or (PostgreSQL 15 and later) a row filter
/// or column list on a captured table. What it leaves out would be missing from the log without
/// a trace; columns are kept out of events by `deny_columns` and `allow_columns` instead.
async fn check_publication(pool: &PgPool, settings: &PostgresCapture) -> anyhow::Result<()> {
    let publication = &settings.publication;
    let whole: Option<bool> = sqlx::query_scalar(
        "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication \
         WHERE pubname = $1",
    )
    .bind(publication)
    .fetch_optional(pool)
    .await?;
    if whole == Some(false) {
        return Err(Misconfigured(format!(
            "publication `{publication}` does not publish every insert, update, delete and \
             truncate (its `publish` option), so the changes it leaves out would be missing \
             from the log; `ALTER PUBLICATION {publication} SET (publish = 'insert, update, \
             delete, truncate')`"
        ))
        .into());
    }
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(pool)
        .await?;
    if version < 150_000 {
        return Ok(());
    }
    let partial: Vec<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_publication_rel r \
         JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE p.pubname = $1 AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL) ORDER BY 1, 2",
    )
    .bind(publication)
    .fetch_all(pool)
    .await?;
    let partial: Vec<String> = partial
        .into_iter()
        .filter(|(schema, table)| settings.captures(schema, table))
        .map(|(schema, table)| format!("{schema}.{table}"))
        .collect();
    if !partial.is_empty() {
        return Err(Misconfigured(format!(
            "publication `{publication}` publishes only some rows or columns of {} (a row \
             filter or a column list), so the changes it leaves out would be missing from the \
             log; publish those tables whole, and keep columns out of events with \
             `deny_columns` or `allow_columns`",
            partial.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// What a gap in the capture is recorded with: the log, and whom the events are by.
struct Gaps<'a, S: Store> {
    log: &'a AuditLog<S>,
    settings: &'a PostgresCapture,
    tenant: &'a TenantId,
    recorded_by: &'a str,
}

impl<S: Store> Gaps<'_, S> {
    /// A table of the publication that `tables` does not match (a captured table renamed or
    /// moved): its changes are passed over from now on, and since when is recorded, once per
    /// name.
    async fn record_unmatched(&self, table: &str) -> anyhow::Result<()> {
        let name = &self.settings.name;
        let data = serde_json::json!({
            "table": table,
            "reason": "the table is in the publication but `tables` does not match it (renamed \
                       or moved since it was added, or added by someone else): its changes are \
                       not captured",
        });
        self.record_gap(table, data, format!("{name}:gap:unmatched:{table}"))
            .await
    }

    /// The publication, checked again, leaves changes out: those made since the last look
    /// (`PUBLICATION_SYNC_EVERY`) may be missing. Recorded before the capture stops.
    async fn record_publication_changed(&self, pool: &PgPool, why: &str) -> anyhow::Result<()> {
        let at: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(pool)
            .await?;
        let name = &self.settings.name;
        let publication = &self.settings.publication;
        let data = serde_json::json!({
            "publication": publication,
            "found_at_lsn": at,
            "reason": format!(
                "the publication was changed to leave changes out; those made since the \
                 capture last looked (at most {} s before this event) may be missing, and none \
                 are captured until it is fixed: {why}",
                PUBLICATION_SYNC_EVERY.as_secs()
            ),
        });
        let key = format!("{name}:gap:publication:{at}");
        self.record_gap(&format!("publication {publication}"), data, key)
            .await
    }

    async fn record_gap(
        &self,
        table: &str,
        data: serde_json::Value,
        key: String,
    ) -> anyhow::Result<()> {
        let event = gap_event(self.log, self.settings, table, &data, key, None)?;
        self.log
            .record_in(self.tenant.clone(), self.recorded_by, vec![event])
            .await?;
        Ok(())
    }

    /// A table added to the publication while the slot exists: its changes committed before
    /// (a table created since the last look, [`PUBLICATION_SYNC_EVERY`] ago, or while the
    /// service was stopped) were not captured. Recorded as a `capture.gap` for the table before
    /// it is added, so that a failure in between leaves the record, never the gap alone. The
    /// key names the table's OID and the WAL position it was found at: a table taken out of
    /// the publication and put back is a new gap, not a replay of its first.
    async fn record_table(&self, pool: &PgPool, table: &HostTable) -> anyhow::Result<()> {
        let (oid, had_rows, at): (i64, bool, String) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT $1::text::regclass::oid::bigint, EXISTS (SELECT 1 FROM {}), \
             pg_current_wal_lsn()::text",
                table.qualified()
            )))
            .bind(table.qualified())
            .fetch_one(pool)
            .await?;
        let name = &self.settings.name;
        tracing::warn!(
            capture = %name, table = %table.display(), had_rows,
            "a table is added to the publication: its changes before now were not captured"
        );
        let data = serde_json::json!({
            "table": table.display(),
            "had_rows": had_rows,
            "found_at_lsn": at,
            "reason": "the table was added to the publication only now (it was created since \
                       the capture last looked, taken out of the publication, or changed while \
                       the service was stopped); its changes committed before this event, or \
                       while it was out of the publication, were not captured",
        });
        let key = format!("{name}:gap:table:{oid}:{at}");
        self.record_gap(&table.display(), data, key).await?;
        Ok(())
    }
}

/// A `capture.gap` event: what `entity` missed, and why (`data`).
fn gap_event<S: Store>(
    log: &AuditLog<S>,
    settings: &PostgresCapture,
    entity: &str,
    data: &Value,
    key: String,
    occurred_at: Option<OffsetDateTime>,
) -> anyhow::Result<NewEvent> {
    let name = &settings.name;
    let raw = RawEvent {
        event_type: "capture.gap".into(),
        user_identity: format!("capture:{name}"),
        action: None,
        entity: Some(entity.to_owned()),
        entity_id: None,
        property: None,
        source: Some(name.clone()),
        ip: None,
        outcome: Some(crate::model::Outcome::Failure),
        occurred_at,
        event_data: Some(serde_json::value::to_raw_value(data)?),
        idempotency_key: Some(key),
    };
    log.parse(raw).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Warns of each `deny_columns` or `allow_columns` entry that names no column of the host: a
/// misspelt entry denies nothing, or keeps back the columns it meant to let through.
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
    for (list, entries) in [
        ("deny_columns", &settings.deny_columns),
        ("allow_columns", &settings.allow_columns),
    ] {
        for entry in entries {
            if !columns.iter().any(|c| c.eq_ignore_ascii_case(entry)) {
                tracing::warn!(
                    capture = %settings.name, column = %entry, list,
                    "an entry names no column of the host database"
                );
            }
        }
    }
    Ok(())
}

/// Installs, on each of `tables`, a statement trigger that sends the role running the
/// statement (`current_user`) as a transactional `ROLE_PREFIX` message, so that its changes
/// are recorded as by that role. Idempotent.
async fn ensure_role_triggers(pool: &PgPool, tables: &[(String, String)]) -> anyhow::Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION auditor_capture_role() RETURNS trigger LANGUAGE plpgsql \
         SET search_path = pg_catalog, pg_temp AS \
         $$ BEGIN \
           PERFORM pg_catalog.pg_logical_emit_message(true, '{ROLE_PREFIX}', current_user::text); \
         RETURN NULL; END $$"
    )))
    .execute(pool)
    .await?;
    for (schema, table) in tables {
        let statement = format!(
            "CREATE OR REPLACE TRIGGER auditor_capture_role \
             AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON \"{}\".\"{}\" \
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

/// Installs the event triggers that send, before and after each `ALTER PUBLICATION`, every
/// publication's state (`PUBLICATION_PREFIX`), in the command's transaction: the
/// capture reads it in WAL order, so a narrowing is seen however briefly it lasted, also one
/// made while the service was stopped. Event triggers need a superuser; without one, this is
/// warned of and changes are only looked for every `PUBLICATION_SYNC_EVERY`.
async fn ensure_publication_trace(pool: &PgPool, settings: &PostgresCapture) -> anyhow::Result<()> {
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(pool)
            .await?;
    if !superuser {
        tracing::warn!(
            capture = %settings.name,
            "the capture's role is no superuser, so it cannot install the event trigger that \
             traces changes to the publication: one narrowed and restored within 5 s would \
             leave changes out without a trace"
        );
        return Ok(());
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE OR REPLACE FUNCTION auditor_capture_publication() RETURNS event_trigger \
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$ DECLARE p record; BEGIN \
           FOR p IN SELECT pubname, pubinsert, pubupdate, pubdelete, pubtruncate \
                    FROM pg_catalog.pg_publication LOOP \
             PERFORM pg_catalog.pg_logical_emit_message(true, '{PUBLICATION_PREFIX}', \
               pg_catalog.json_build_object( \
               'publication', p.pubname, 'insert', p.pubinsert, 'update', p.pubupdate, \
               'delete', p.pubdelete, 'truncate', p.pubtruncate, 'role', current_user, \
               'event', tg_event, \
               'tables', (SELECT coalesce(json_agg(t.schemaname || '.' || t.tablename), '[]') \
                          FROM pg_catalog.pg_publication_tables t \
                          WHERE t.pubname = p.pubname))::text); \
           END LOOP; END $$; \
         DO $$ BEGIN \
           IF NOT EXISTS (SELECT 1 FROM pg_event_trigger \
                          WHERE evtname = 'auditor_capture_publication') THEN \
             CREATE EVENT TRIGGER auditor_capture_publication ON ddl_command_end \
               WHEN TAG IN ('ALTER PUBLICATION') \
               EXECUTE FUNCTION auditor_capture_publication(); \
           END IF; \
           IF NOT EXISTS (SELECT 1 FROM pg_event_trigger \
                          WHERE evtname = 'auditor_capture_publication_before') THEN \
             CREATE EVENT TRIGGER auditor_capture_publication_before ON ddl_command_start \
               WHEN TAG IN ('ALTER PUBLICATION') \
               EXECUTE FUNCTION auditor_capture_publication(); \
           END IF; END $$"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// The gap an `ALTER PUBLICATION` of this capture's publication made, from its state `before`
/// and `after` the command: the operations it no longer publishes and the captured tables it
/// took out, and who ran it; `None` when it left out nothing this capture reads.
fn publication_narrowed(
    settings: &PostgresCapture,
    before: Option<Value>,
    after: &Value,
) -> Option<Value> {
    let left_out: Vec<&str> = ["insert", "update", "delete", "truncate"]
        .into_iter()
        .filter(|operation| after[operation] != true)
        .collect();
    let tables = |state: &Value| -> HashSet<String> {
        state["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    };
    let now = tables(after);
    let mut taken_out: Vec<String> = before
        .as_ref()
        .map(tables)
        .unwrap_or_default()
        .into_iter()
        .filter(|table| !now.contains(table))
        .filter(|table| {
            table
                .split_once('.')
                .is_some_and(|(schema, name)| settings.captures(schema, name))
        })
        .collect();
    taken_out.sort();
    if left_out.is_empty() && taken_out.is_empty() {
        return None;
    }
    Some(serde_json::json!({
        "publication": settings.publication,
        "left_out": left_out,
        "tables_taken_out": taken_out,
        "role": after["role"],
        "reason": "the publication was changed to leave these operations or tables out: their \
                   changes from this event until it publishes them again were not captured",
    }))
}

/// The tables the capture covers, by the publication as it is now.
async fn published_tables(
    pool: &PgPool,
    settings: &PostgresCapture,
) -> anyhow::Result<Vec<(String, String)>> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
    )
    .bind(&settings.publication)
    .fetch_all(pool)
    .await?;
    Ok(tables
        .into_iter()
        .filter(|(schema, table)| settings.captures(schema, table))
        .collect())
}

/// [`ensure_role_triggers`], a failure warned of: the changes are still captured, as by the
/// capture's name when no context message names someone.
async fn install_role_triggers(
    pool: &PgPool,
    settings: &PostgresCapture,
    tables: &[(String, String)],
) {
    if let Err(error) = ensure_role_triggers(pool, tables).await {
        tracing::warn!(
            capture = %settings.name, error = crate::telemetry::error_chain(error.as_ref()),
            "cannot install the triggers that name a change's database role; changes \
             without a context message are recorded as by the capture's name"
        );
    }
}

/// Whether the replication slot exists.
/// Whether the slot exists; one that the capture cannot read (made with another output plugin,
/// physical, or on another database) is `Misconfigured`.
async fn slot_exists(pool: &PgPool, settings: &PostgresCapture) -> anyhow::Result<bool> {
    let slot: Option<(Option<String>, String, Option<String>, String)> = sqlx::query_as(
        "SELECT plugin::text, slot_type, database::text, current_database()::text \
         FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&settings.slot)
    .fetch_optional(pool)
    .await?;
    let Some((plugin, kind, database, here)) = slot else {
        return Ok(false);
    };
    let fault = if kind != "logical" {
        Some(format!("is a {kind} slot"))
    } else if plugin.as_deref() != Some("pgoutput") {
        Some(format!(
            "was made with the output plugin `{}`",
            plugin.unwrap_or_default()
        ))
    } else if database.as_deref() != Some(here.as_str()) {
        Some(format!(
            "belongs to the database `{}`",
            database.unwrap_or_default()
        ))
    } else {
        None
    };
    match fault {
        Some(fault) => Err(Misconfigured(format!(
            "replication slot `{}` {fault}; the capture needs a logical `pgoutput` slot of \
             database `{here}`: drop it, or name another slot (the capture makes it)",
            settings.slot
        ))
        .into()),
        None => Ok(true),
    }
}

/// A slot that someone else made again, or advanced, while the capture was away is past where
/// the capture last confirmed it: the changes committed in between were never read. Recorded
/// as a `capture.gap`, then taken as the capture's position.
async fn check_slot_position<S: Store>(
    log: &AuditLog<S>,
    pool: &PgPool,
    settings: &PostgresCapture,
    gaps: &Gaps<'_, S>,
) -> anyhow::Result<()> {
    let confirmed: Option<String> = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&settings.slot)
    .fetch_optional(pool)
    .await?
    .flatten();
    let Some(confirmed) = confirmed.as_deref().and_then(parse_lsn) else {
        return Ok(());
    };
    if let Some((slot, last)) = log.capture_position(&settings.name).await?
        && slot == settings.slot
        && confirmed > last
    {
        tracing::error!(
            capture = %settings.name, slot = %settings.slot,
            last_confirmed = %format_lsn(last), found_at = %format_lsn(confirmed),
            "the replication slot is past where this capture confirmed it (made again, or \
             advanced, by someone else): the changes committed in between were not captured"
        );
        let data = serde_json::json!({
            "slot": settings.slot,
            "last_confirmed_lsn": format_lsn(last),
            "found_at_lsn": format_lsn(confirmed),
            "reason": "the replication slot was past where this capture last confirmed it \
                       (made again or advanced by someone else, or this log's database restored \
                       from an earlier backup): changes committed on the host between the two \
                       positions were not captured",
        });
        let key = format!("{}:gap:slot-moved:{}", settings.name, format_lsn(confirmed));
        gaps.record_gap("replication_slot", data, key).await?;
    }
    log.set_capture_position(&settings.name, &settings.slot, confirmed)
        .await?;
    Ok(())
}

/// Creates the slot; returns the LSN it begins at.
async fn create_slot(pool: &PgPool, settings: &PostgresCapture) -> anyhow::Result<String> {
    let lsn: String = sqlx::query_scalar(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
    )
    .bind(&settings.slot)
    .fetch_one(pool)
    .await?;
    tracing::info!(slot = %settings.slot, %lsn, "created the replication slot");
    Ok(lsn)
}

/// A slot missing where this capture had recorded changes before (it was dropped, or the host
/// restored from a backup) cannot give back what committed since: before a new slot is made,
/// that gap is recorded in the log itself, as a `capture.gap` event (once per gap, whatever
/// the retries), and logged as an error.
async fn record_gap<S: Store>(
    log: &AuditLog<S>,
    pool: &PgPool,
    settings: &PostgresCapture,
    tenant: &TenantId,
    recorded_by: &str,
) -> anyhow::Result<()> {
    let Some(last) = log.last_recorded_by(tenant, recorded_by).await? else {
        return Ok(());
    };
    let created_at: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    // Nothing captured since the last gap's record: this is that gap still (a retry after the
    // record, before the new slot was made), or one more loss of a slot that captured nothing;
    // either way its record, naming the last change captured, stands.
    if last.event_type == "capture.gap" && last.entity.as_deref() == Some("replication_slot") {
        tracing::error!(
            capture = %settings.name, slot = %settings.slot, resumed_at = %created_at,
            gap_seq = %last.seq,
            "the replication slot is missing and is created anew; nothing was captured since \
             the gap recorded at this seq, which stands for this one too"
        );
        return Ok(());
    }
    let last_key = last.idempotency_key.clone().unwrap_or_default();
    tracing::error!(
        capture = %settings.name, slot = %settings.slot, last_recorded = %last_key,
        resumed_at = %created_at,
        "the replication slot was missing and was created anew: changes committed on the host \
         since the last one recorded and before the new slot were not captured"
    );
    let data = serde_json::json!({
        "slot": settings.slot,
        "last_recorded_key": last_key,
        "last_recorded_at": last
            .recorded_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "found_at_lsn": created_at,
        "reason": "the replication slot was missing and was created anew; changes committed \
                   on the host after the last recorded one and before the new slot was made \
                   (logged with its position; this event's recorded_at is when the gap was \
                   found, and a retry may make the slot later) were not captured",
    });
    let raw = RawEvent {
        event_type: "capture.gap".into(),
        user_identity: format!("capture:{}", settings.name),
        action: None,
        entity: Some("replication_slot".into()),
        entity_id: Some(settings.slot.clone()),
        property: None,
        source: Some(settings.name.clone()),
        ip: None,
        outcome: Some(crate::model::Outcome::Failure),
        // Where the gap begins; and nothing here differs in a retry, which is then a replay.
        occurred_at: Some(last.recorded_at),
        event_data: Some(serde_json::value::to_raw_value(&data)?),
        idempotency_key: Some(format!("{}:gap:{last_key}", settings.name)),
    };
    let event = log.parse(raw).map_err(|e| anyhow::anyhow!("{e}"))?;
    log.record_in(tenant.clone(), recorded_by, vec![event])
        .await?;
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
///
/// Only transactions that committed before the host's WAL flush position read first are
/// decoded, and that position is returned: when nothing came back, none of the captured tables changed
/// before it.
async fn peek(
    pool: &PgPool,
    settings: &PostgresCapture,
    relations: &mut HashMap<u32, Arc<Relation>>,
) -> anyhow::Result<(Vec<Transaction>, Lsn)> {
    // The flush position, not the write position: decoding reads only flushed WAL, and a
    // commit written but not yet flushed (`synchronous_commit = off`) must not be passed by
    // the advance of a peek that could not see it.
    let upto: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint")
            .fetch_one(pool)
            .await?;
    let upto = Lsn::try_from(upto)?;
    let rows = sqlx::query(
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, $3, \
         'proto_version', '1', 'publication_names', $4, 'messages', 'true')",
    )
    .bind(&settings.slot)
    .bind(format_lsn(upto))
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
                    context: Arc::default(),
                    publication_narrowed: Vec::new(),
                    publication_before: None,
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
                relations.insert(relation.id, Arc::new(relation));
            }
            Message::Insert { relation, new } => push(
                &mut open,
                relations,
                relation,
                ChangeKind::Insert,
                None,
                Some(new),
            ),
            Message::Update { relation, old, new } => {
                let old = old.map(|old| known_values(relations, relation, old));
                push(
                    &mut open,
                    relations,
                    relation,
                    ChangeKind::Update,
                    old,
                    Some(new),
                );
            }
            Message::Delete { relation, old } => {
                let old = known_values(relations, relation, old);
                push(
                    &mut open,
                    relations,
                    relation,
                    ChangeKind::Delete,
                    Some(old),
                    None,
                );
            }
            Message::Logical {
                transactional: true,
                prefix,
                content,
            } if prefix == CONTEXT_PREFIX => {
                let Some(transaction) = open.as_mut() else {
                    continue;
                };
                let context = transaction.context.with_message(&content);
                let refused = &context.refused[transaction.context.refused.len()..];
                if !refused.is_empty() {
                    tracing::warn!(
                        capture = %settings.name, refused = %refused.join("; "),
                        "a context message is refused in part; the changes after it keep what \
                         the log takes of it, and say what was refused (event_data.context_refused)"
                    );
                }
                transaction.context = Arc::new(context);
            }
            Message::Logical {
                transactional: true,
                prefix,
                content,
            } if prefix == PUBLICATION_PREFIX => {
                let Some(transaction) = open.as_mut() else {
                    continue;
                };
                let Ok(state) = serde_json::from_slice::<Value>(&content) else {
                    continue;
                };
                if state["publication"] != settings.publication.as_str() {
                    continue;
                }
                if state["event"] == "ddl_command_start" {
                    transaction.publication_before = Some(state);
                } else if let Some(narrowed) =
                    publication_narrowed(settings, transaction.publication_before.take(), &state)
                {
                    transaction.publication_narrowed.push(narrowed);
                }
            }
            Message::Logical {
                transactional: false,
                prefix,
                ..
            } if prefix == CONTEXT_PREFIX => {
                tracing::warn!(
                    capture = %settings.name,
                    "a context message was sent outside the transaction \
                     (pg_logical_emit_message(false, …)): it applies to no change; send it \
                     with true, before the changes it describes"
                );
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
            Message::Truncate {
                relations: truncated,
            } => {
                for relation in truncated {
                    push(
                        &mut open,
                        relations,
                        relation,
                        ChangeKind::Truncate,
                        None,
                        None,
                    );
                }
            }
            Message::Logical { .. } | Message::Other(_) => {}
        }
    }
    Ok((transactions, upto))
}

/// An old row's values as far as they were sent: of a key-only row, the columns outside the
/// replica identity are unknown (`Unchanged`, left out of the event), not null.
fn known_values(relations: &HashMap<u32, Arc<Relation>>, relation: u32, old: OldRow) -> Vec<Datum> {
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
    relations: &HashMap<u32, Arc<Relation>>,
    relation: u32,
    kind: ChangeKind,
    old: Option<Vec<Datum>>,
    new: Option<Vec<Datum>>,
) {
    let Some(relation) = relations.get(&relation).cloned() else {
        // pgoutput describes each table before its first change in a session.
        tracing::warn!(relation, "a change to a table never described");
        return;
    };
    if let Some(transaction) = open {
        transaction.changes.push(Change {
            relation,
            kind,
            old,
            new,
            role: None,
            context: Arc::clone(&transaction.context),
        });
    }
}

/// The primary key's columns of the table `relation` (its OID), in key order; none for a table
/// without one. Only for a `REPLICA IDENTITY FULL` table, whose `Relation` message marks every
/// column as the key: of any other, the message's own key flags name the row as it was when
/// the change was made, which the catalog read now may no longer say.
async fn primary_key(pool: &PgPool, relation: u32) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "WITH identity AS ( \
           SELECT i.* FROM pg_index i WHERE i.indrelid = $1::oid AND i.indisprimary) \
         SELECT a.attname::text FROM identity i \
         JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         ORDER BY k.n",
    )
    .bind(i64::from(relation))
    .fetch_all(pool)
    .await?)
}

/// What is known of the host's tables beyond the slot's descriptions: the primary keys of those
/// whose replica identity is the whole row (with the description they were read for).
struct Tables<'a> {
    full_row_keys: &'a HashMap<u32, (Arc<Relation>, Vec<String>)>,
}

impl Tables<'_> {
    /// Whether `column` of `relation` is part of the key that names its rows.
    fn names_rows(&self, relation: &Relation, column: &super::pgoutput::Column) -> bool {
        if relation.replica_identity != b'f' {
            return column.key;
        }
        self.full_row_keys
            .get(&relation.id)
            .is_some_and(|(_, keys)| keys.contains(&column.name))
    }
}

/// The events of one transaction's changes to the captured tables.
fn events_of<S: Store>(
    log: &AuditLog<S>,
    settings: &PostgresCapture,
    tables: &Tables<'_>,
    transaction: &Transaction,
) -> Vec<NewEvent> {
    let mut events = Vec::new();
    for (index, narrowed) in transaction.publication_narrowed.iter().enumerate() {
        let key = format!(
            "{}:gap:publication:{}:{index}",
            settings.name,
            format_lsn(transaction.commit_lsn)
        );
        let entity = format!("publication {}", settings.publication);
        match gap_event(
            log,
            settings,
            &entity,
            narrowed,
            key,
            Some(transaction.committed_at),
        ) {
            Ok(event) => {
                tracing::error!(
                    capture = %settings.name, change = %narrowed,
                    "the publication was narrowed: changes were left out; recorded as a capture.gap"
                );
                events.push(event);
            }
            Err(error) => tracing::error!(%error, "a publication gap cannot be recorded"),
        }
    }
    for (index, change) in transaction.changes.iter().enumerate() {
        let relation = &change.relation;
        if !settings.captures(&relation.schema, &relation.table) {
            continue;
        }
        let context = &change.context.fields;
        let context_user = change.context.user_identity.clone();
        let ip = change.context.ip;
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
        // The key names the row, also when `allow_columns` leaves it out of the data; a denied
        // column's value never leaves, even as a key.
        let key_source = change.new.as_ref().or(change.old.as_ref());
        let keys: Vec<String> = relation
            .columns
            .iter()
            .zip(key_source.into_iter().flatten())
            .filter(|(column, _)| tables.names_rows(relation, column))
            .filter(|(column, _)| !settings.denies(&relation.schema, &relation.table, &column.name))
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
        // Only the columns the event may show: that a hidden column changed, and when, is
        // itself what the deny list keeps back.
        let property = changed_columns(relation, change, |column| {
            settings.copies(&relation.schema, &relation.table, column)
        });
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
        if !change.context.refused.is_empty() {
            data.insert(
                "context_refused".into(),
                Value::from(change.context.refused.join("; ")),
            );
        }
        let plain_data = data.clone();
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
        let parsed = log.parse(raw.clone()).or_else(|error| {
            // The application's context may be what the log refuses (a name too long, a
            // number no double holds): the change is then recorded with as much of it as the
            // log takes (its other fields first, then the ip, then the user given up), the
            // refusal said in `context_refused`, rather than lost.
            let by_role = change.role.clone().unwrap_or_else(|| settings.name.clone());
            let kept = |given: bool| {
                if given {
                    &[true, false][..]
                } else {
                    &[false][..]
                }
            };
            let mut variants = Vec::new();
            for &user in kept(context_user.is_some()) {
                for &address in kept(ip.is_some()) {
                    for &fields in kept(!context.is_empty()) {
                        variants.push((user, address, fields));
                    }
                }
            }
            // The first keeps everything: the event just refused.
            for (user, address, fields) in variants.into_iter().skip(1) {
                let mut data = plain_data.clone();
                if fields {
                    data.insert("context".into(), Value::Object(context.clone()));
                }
                let refused = change
                    .context
                    .refused
                    .iter()
                    .cloned()
                    .chain([storable(error.to_string())])
                    .collect::<Vec<_>>();
                data.insert("context_refused".into(), Value::from(refused.join("; ")));
                let attempt = log.parse(RawEvent {
                    user_identity: if user {
                        raw.user_identity.clone()
                    } else {
                        by_role.clone()
                    },
                    ip: if address { ip } else { None },
                    event_data: serde_json::value::to_raw_value(&Value::Object(data)).ok(),
                    ..raw.clone()
                });
                if attempt.is_ok() {
                    tracing::warn!(
                        capture = %settings.name, %error,
                        "a change's context is refused by the log; recorded with what it takes"
                    );
                    return attempt;
                }
            }
            Err(error)
        });
        match parsed {
            Ok(event) => events.push(event),
            Err(error) => {
                // Nothing of the row or the context: only what names the change, which the log
                // always takes, so that the change is never dropped without a trace.
                tracing::warn!(
                    capture = %settings.name, %error,
                    "a captured change cannot be recorded; recording why (capture.unrecordable)"
                );
                let placeholder = RawEvent {
                    user_identity: format!("capture:{}", settings.name),
                    ip: None,
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
fn changed_columns(relation: &Relation, change: &Change, shown: impl Fn(&str) -> bool) -> String {
    let names = relation.columns.iter().enumerate().filter(|(i, column)| {
        if !shown(&column.name) {
            return false;
        }
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

    /// A URL that cannot reach a PostgreSQL server is refused when the configuration is read,
    /// without its password, instead of being retried as if the host were down.
    #[test]
    fn urls_that_are_no_postgresql_urls_are_refused() {
        for url in [
            "mysql://user:pw-secret@127.0.0.1/app",
            "postgres://user:pw-secret@127.0.0.1:notaport/app",
        ] {
            let capture = PostgresCapture {
                url: crate::config::DatabaseUrl::new(url),
                ..capture()
            };
            let error = capture.validate().unwrap_err();
            assert!(error.contains("url"), "{error}");
            assert!(!error.contains("pw-secret"), "{error}");
        }
        assert!(capture().validate().is_ok());
    }

    #[test]
    fn two_captures_of_one_name_or_one_slot_are_refused() {
        let settings = |captures: Vec<PostgresCapture>| CaptureSettings { postgres: captures };
        let other = PostgresCapture {
            name: "other".into(),
            slot: "other".into(),
            ..capture()
        };
        assert!(settings(vec![capture(), other.clone()]).validate().is_ok());
        let same_name = PostgresCapture {
            slot: "third".into(),
            ..capture()
        };
        assert!(settings(vec![capture(), same_name]).validate().is_err());
        let same_slot = PostgresCapture {
            slot: "auditor".into(),
            ..other.clone()
        };
        assert!(settings(vec![capture(), same_slot]).validate().is_err());
        // One slot name on another database is another slot.
        let elsewhere = PostgresCapture {
            slot: "auditor".into(),
            url: crate::config::DatabaseUrl::new("postgres://host/other"),
            ..other
        };
        assert!(settings(vec![capture(), elsewhere]).validate().is_ok());
    }

    #[test]
    fn allow_columns_match_without_regard_to_case_and_keys_are_never_hidden_by_them() {
        let settings = PostgresCapture {
            allow_columns: vec!["public.USERS.Email".into()],
            ..capture()
        };
        assert!(settings.copies("public", "users", "email"));
        assert!(!settings.copies("public", "users", "id"));
        assert!(!settings.denies("public", "users", "id"));
        assert!(settings.denies("public", "users", "SECRET"));
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
