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

mod context;
mod decode;
mod events;
mod gaps;
mod publication;
mod settings;
mod slot;
mod triggers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

use super::pgoutput::{Lsn, Relation, format_lsn, parse_lsn};
use super::{Backoff, Misconfigured, retry_later, run_until_stopped};
use crate::log::{AuditLog, LogError};
use crate::model::{NewEvent, RawEvent, TenantId};
use crate::store::Store;
use decode::{peek, primary_key};
use events::{Tables, events_of};
use gaps::Gaps;
use publication::{
    Looks, check_publication, published_tables, sync_publication, warn_of_unmatched_denials,
};
use slot::{
    check_lag, check_slot_position, claim_slot, create_slot, record_gap, record_slot_moved,
    slot_exists,
};
use triggers::{ensure_message_key, ensure_publication_trace, install_role_triggers};

pub use settings::{CaptureSettings, PostgresCapture};

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
    let mut looks = Looks::default();
    // A table added to the publication while the slot exists missed what came before.
    sync_publication(&pool, settings, &mut looks, false, &gaps, slot_existed).await?;
    check_publication(&pool, settings).await?;
    warn_of_unmatched_denials(&pool, settings).await?;
    let key = match ensure_message_key(&pool).await {
        Ok(key) => Some(key),
        Err(error) if error.downcast_ref::<Misconfigured>().is_some() => return Err(error),
        Err(error) => {
            tracing::warn!(
                capture = %settings.name, error = crate::telemetry::error_chain(error.as_ref()),
                "cannot make the key the capture's triggers sign with (the role needs CREATE \
                 on its first schema): changes are recorded without their database role, and \
                 changes to the publication are looked for every 5 s only"
            );
            None
        }
    };
    if let Some(key) = &key {
        // Before the slot, as the role triggers: every change to the publication it holds is
        // told.
        ensure_publication_trace(&pool, key, settings).await?;
        // Before the slot: every change the slot will hold then has its role.
        if settings.record_role {
            let tables = published_tables(&pool, settings).await?;
            install_role_triggers(&pool, key, settings, &tables).await;
        }
    }
    // Where this capture last confirmed the slot: found past it, someone else moved it.
    let mut position = if slot_existed {
        check_slot_position(log, &pool, settings, &gaps).await?
    } else {
        record_gap(log, &pool, settings, &tenant, &recorded_by).await?;
        let created = parse_lsn(&create_slot(&pool, settings).await?);
        if let Some(lsn) = created {
            log.set_capture_position(&settings.name, &settings.slot, lsn)
                .await?;
        }
        created
    };
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
            let added = sync_publication(&pool, settings, &mut looks, true, &gaps, true).await?;
            // Changed while running, it may already have left changes out since the last look.
            if let Err(error) = check_publication(&pool, settings).await {
                if error.downcast_ref::<Misconfigured>().is_some() {
                    gaps.record_publication_changed(&pool, &error.to_string())
                        .await?;
                }
                return Err(error);
            }
            if let (true, Some(key)) = (settings.record_role, &key) {
                install_role_triggers(&pool, key, settings, &added).await;
            }
            synced = Instant::now();
        }
        let (transactions, upto, confirmed) =
            peek(&pool, settings, &mut relations, key.as_ref()).await?;
        if let (Some(last), Some(confirmed)) = (position, confirmed)
            && confirmed > last
        {
            record_slot_moved(&gaps, last, confirmed).await?;
            log.set_capture_position(&settings.name, &settings.slot, confirmed)
                .await?;
            position = Some(confirmed);
        }
        let traced = transactions
            .iter()
            .flat_map(|t| &t.tables_added)
            .filter_map(|added| added["table"].as_str()?.split_once('.'))
            .map(|(schema, table)| (schema.to_owned(), table.to_owned()));
        looks.traced.extend(traced);
        let Some(last) = transactions.last() else {
            // Nothing this capture reads committed before `upto`: the slot moves there, or it
            // would hold back (and decode again at every poll) the WAL of everything else.
            // At most once a second: each records the position in the log's database too.
            if upto > quiet_until && quiet_advanced.elapsed() >= QUIET_ADVANCE_EVERY {
                still_claimed(&mut claim).await?;
                advance(log, &pool, settings, upto).await?;
                position = Some(upto);
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
        position = Some(end_lsn);
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
