//! The logical replication slot: claimed for one capture at a time, checked, created, and
//! watched for lag; a slot lost or moved by someone else is recorded as a gap.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::CLAIM_RETRY_EVERY;
use super::gaps::{Gaps, gap_event};
use super::settings::PostgresCapture;
use crate::ingest::Misconfigured;
use crate::ingest::pgoutput::{format_lsn, parse_lsn};
use crate::log::AuditLog;
use crate::model::TenantId;
use crate::store::Store;

/// Takes the slot for this capture alone, for as long as `claim` stays open: a session
/// advisory lock on the host named after the slot. Another capture reading it (another
/// `auditor` instance with the same configuration, or a second capture of this database under
/// another spelling of its URL) holds it: this one stands by until that one stops, since two
/// would each confirm changes the other has not recorded. False when `stop` came first.
pub(super) async fn claim_slot(
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

/// Whether the replication slot exists.
/// Whether the slot exists; one that the capture cannot read (made with another output plugin,
/// physical, or on another database) is `Misconfigured`.
pub(super) async fn slot_exists(pool: &PgPool, settings: &PostgresCapture) -> anyhow::Result<bool> {
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
pub(super) async fn check_slot_position<S: Store>(
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
        gaps.record_gap("replication_slot", Some(&settings.slot), data, key)
            .await?;
    }
    log.set_capture_position(&settings.name, &settings.slot, confirmed)
        .await?;
    Ok(())
}

/// Creates the slot; returns the LSN it begins at.
pub(super) async fn create_slot(
    pool: &PgPool,
    settings: &PostgresCapture,
) -> anyhow::Result<String> {
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
pub(super) async fn record_gap<S: Store>(
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
    // Where the gap begins; and nothing here differs in a retry, which is then a replay.
    let event = gap_event(
        log,
        settings,
        ("replication_slot", Some(&settings.slot)),
        &data,
        format!("{}:gap:{last_key}", settings.name),
        Some(last.recorded_at),
    )?;
    log.record_in(tenant.clone(), recorded_by, vec![event])
        .await?;
    Ok(())
}

/// Logs how much write-ahead log the slot holds back (and sets `auditor_capture_slot_lag_bytes`),
/// warning past `lag_warning_bytes`: a slot that does not move keeps the host's WAL until its
/// disk fills.
pub(super) async fn check_lag(pool: &PgPool, settings: &PostgresCapture) {
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
