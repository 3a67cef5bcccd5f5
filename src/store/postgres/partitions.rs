//! Dropping a month partition of `events` past retention (docs/integrity.md, "Dropped
//! partitions"): finding the oldest, reading each tenant's `seq` range in it, and dropping it
//! inside the transaction that appends the drop's records.

use sqlx::{PgConnection, Row};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::{PARTITION_LOCK_TIMEOUT, next_month, quote_identifier};
use crate::integrity::Digest;
use crate::integrity::dropped::DroppedPrefix;
use crate::model::{Seq, TenantId};
use crate::store::{MonthPartition, PartitionRange, StoreError, corrupt};

/// A partition's month, from the name `events_add_partition` gives it (`events_y2026m11`).
fn month_of(name: &str) -> Option<Date> {
    let rest = name.strip_prefix("events_y")?;
    let (year, month) = rest.split_once('m')?;
    let month = Month::try_from(month.parse::<u8>().ok()?).ok()?;
    Date::from_calendar_date(year.parse().ok()?, month, 1).ok()
}

fn midnight_utc(day: Date) -> OffsetDateTime {
    PrimitiveDateTime::new(day, Time::MIDNIGHT).assume_utc()
}

/// The oldest partition attached to `events`, if its month ended by `ended_by`, with its ranges.
pub(super) async fn oldest(
    conn: &mut PgConnection,
    ended_by: OffsetDateTime,
) -> Result<Option<MonthPartition>, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'events'::regclass",
    )
    .fetch_all(&mut *conn)
    .await?;
    let Some((month, name)) = names
        .into_iter()
        .filter_map(|name| Some((month_of(&name)?, name)))
        .min()
    else {
        return Ok(None);
    };
    let end = midnight_utc(next_month(month));
    if end > ended_by {
        return Ok(None);
    }
    let tenants = ranges(conn, &name).await?;
    Ok(Some(MonthPartition { name, end, tenants }))
}

/// Each tenant's `seq` range in the partition, by tenant.
async fn ranges(
    conn: &mut PgConnection,
    partition: &str,
) -> Result<Vec<PartitionRange>, StoreError> {
    let table = quote_identifier(partition);
    let sql = format!(
        "SELECT r.tenant, r.first, r.through, e.hash \
         FROM (SELECT tenant, min(seq) AS first, max(seq) AS through FROM {table} \
               GROUP BY tenant) r \
         JOIN {table} e ON e.tenant = r.tenant AND e.seq = r.through \
         ORDER BY r.tenant"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            let hash: Vec<u8> = row.try_get("hash")?;
            Ok(PartitionRange {
                tenant: TenantId::new(row.try_get::<String, _>("tenant")?),
                first: Seq(row.try_get("first")?),
                through: Seq(row.try_get("through")?),
                through_hash: Digest::from_slice(&hash)
                    .ok_or_else(|| corrupt("events.hash", "not 32 bytes"))?,
            })
        })
        .collect()
}

/// Within the transaction that appended the drop's records and holds the tenants' chain heads:
/// checks that the partition still holds what was read, stores the new dropped prefixes,
/// deletes the idempotency keys of its events, then detaches and drops it.
pub(super) async fn drop_in(
    conn: &mut PgConnection,
    partition: &MonthPartition,
    prefixes: &[(TenantId, DroppedPrefix)],
    dropped_at: OffsetDateTime,
) -> Result<(), StoreError> {
    // Another instance may have dropped it while this one waited for the chain heads.
    let attached: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = 'events'::regclass \
         AND inhrelid = to_regclass($1))",
    )
    .bind(&partition.name)
    .fetch_one(&mut *conn)
    .await?;
    if !attached {
        return Err(StoreError::Conflict(format!(
            "partition {} was dropped meanwhile",
            partition.name
        )));
    }
    let now = ranges(conn, &partition.name).await?;
    let named = now.iter().all(|range| {
        prefixes
            .iter()
            .any(|(tenant, prefix)| *tenant == range.tenant && prefix.through == range.through)
    });
    if now != partition.tenants || !named || prefixes.len() != now.len() {
        return Err(StoreError::Conflict(format!(
            "partition {} changed since it was read",
            partition.name
        )));
    }
    for (tenant, prefix) in prefixes {
        sqlx::query(
            "INSERT INTO dropped_prefixes \
             (tenant, through_seq, chain_hash, frontier, partition, dropped_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant.as_str())
        .bind(prefix.through.0)
        .bind(prefix.chain_hash.as_bytes())
        .bind(prefix.frontier.to_bytes())
        .bind(&partition.name)
        .bind(dropped_at)
        .execute(&mut *conn)
        .await?;
    }
    let table = quote_identifier(&partition.name);
    let statements = [
        format!(
            "DELETE FROM idempotency_keys k USING {table} e \
             WHERE k.tenant = e.tenant AND k.idempotency_key = e.idempotency_key"
        ),
        // DETACH and DROP each take an ACCESS EXCLUSIVE lock on `events`, held to the commit a
        // few milliseconds later; a long query in the way makes the drop wait for the next run
        // instead of stalling every append behind it.
        format!("SET LOCAL lock_timeout = '{PARTITION_LOCK_TIMEOUT}'"),
        format!("ALTER TABLE events DETACH PARTITION {table}"),
        format!("DROP TABLE {table}"),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The tenant's latest dropped prefix.
pub(super) async fn latest_prefix(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<Option<DroppedPrefix>, StoreError> {
    let row = sqlx::query(
        "SELECT through_seq, chain_hash, frontier FROM dropped_prefixes \
         WHERE tenant = $1 ORDER BY through_seq DESC LIMIT 1",
    )
    .bind(tenant.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let through: i64 = row.try_get("through_seq")?;
    let chain_hash: Vec<u8> = row.try_get("chain_hash")?;
    let frontier: Vec<u8> = row.try_get("frontier")?;
    Ok(Some(DroppedPrefix {
        through: Seq(through),
        chain_hash: Digest::from_slice(&chain_hash)
            .ok_or_else(|| corrupt("dropped_prefixes.chain_hash", "not 32 bytes"))?,
        frontier: u64::try_from(through)
            .ok()
            .and_then(|size| crate::integrity::Frontier::from_bytes(size, &frontier))
            .ok_or_else(|| corrupt("dropped_prefixes.frontier", "does not match through_seq"))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_name_gives_its_month() {
        let month = month_of("events_y2026m11").unwrap();
        assert_eq!(
            (month.year(), month.month(), month.day()),
            (2026, Month::November, 1)
        );
        assert_eq!(month_of("events_y2026m13"), None);
        assert_eq!(month_of("events_unpartitioned"), None);
    }
}
