//! `capture.gap` events: what the capture could not read, recorded in the log itself at the
//! point where it was found.

use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::PUBLICATION_SYNC_EVERY;
use super::publication::HostTable;
use super::settings::PostgresCapture;
use crate::log::AuditLog;
use crate::model::{NewEvent, RawEvent, TenantId};
use crate::store::Store;

/// What a gap in the capture is recorded with: the log, and whom the events are by.
pub(super) struct Gaps<'a, S: Store> {
    pub(super) log: &'a AuditLog<S>,
    pub(super) settings: &'a PostgresCapture,
    pub(super) tenant: &'a TenantId,
    pub(super) recorded_by: &'a str,
}

impl<S: Store> Gaps<'_, S> {
    /// A table of the publication that `tables` does not match (a captured table renamed or
    /// moved): its changes are passed over from now on, and since when is recorded, once per
    /// name.
    pub(super) async fn record_unmatched(&self, table: &str) -> anyhow::Result<()> {
        let name = &self.settings.name;
        let data = serde_json::json!({
            "table": table,
            "reason": "the table is in the publication but `tables` does not match it (renamed \
                       or moved since it was added, or added by someone else): its changes are \
                       not captured",
        });
        self.record_gap(table, None, data, format!("{name}:gap:unmatched:{table}"))
            .await
    }

    /// A table `tables` matches that the capture's role cannot add to the publication (it
    /// neither owns it nor is a member of its owner's role): its changes are not captured.
    /// Once per name (a retry is a replay).
    pub(super) async fn record_unaddable(&self, table: &str) -> anyhow::Result<()> {
        let name = &self.settings.name;
        let data = serde_json::json!({
            "table": table,
            "reason": "`tables` matches the table, but the capture's role cannot add it to the \
                       publication (the table belongs to a role it is not a member of): its \
                       changes are not captured; make the capture's role a member of the \
                       table's owner, or leave the table out of `tables`",
        });
        self.record_gap(table, None, data, format!("{name}:gap:unaddable:{table}"))
            .await
    }

    /// The publication, checked again, leaves changes out: those made since the last look
    /// (`PUBLICATION_SYNC_EVERY`) may be missing. Recorded before the capture stops.
    pub(super) async fn record_publication_changed(
        &self,
        pool: &PgPool,
        why: &str,
    ) -> anyhow::Result<()> {
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
        self.record_gap("publication", Some(publication), data, key)
            .await
    }

    /// Records a gap of `entity` (`entity_id`: the slot or publication, none for a table).
    pub(super) async fn record_gap(
        &self,
        entity: &str,
        entity_id: Option<&str>,
        data: serde_json::Value,
        key: String,
    ) -> anyhow::Result<()> {
        let event = gap_event(
            self.log,
            self.settings,
            (entity, entity_id),
            &data,
            key,
            None,
        )?;
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
    pub(super) async fn record_table(
        &self,
        pool: &PgPool,
        table: &HostTable,
    ) -> anyhow::Result<()> {
        let (oid, readable, at): (i64, bool, String) = sqlx::query_as(
            "SELECT $1::text::regclass::oid::bigint, \
               has_table_privilege($1::text::regclass, 'SELECT'), pg_current_wal_lsn()::text",
        )
        .bind(table.qualified())
        .fetch_one(pool)
        .await?;
        // Unknown when the capture's role may not read it (a table someone else put in).
        let had_rows: Option<bool> = if readable {
            Some(
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT EXISTS (SELECT 1 FROM {})",
                    table.qualified()
                )))
                .fetch_one(pool)
                .await?,
            )
        } else {
            None
        };
        let name = &self.settings.name;
        tracing::warn!(
            capture = %name, table = %table.display(), ?had_rows,
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
        self.record_gap(&table.display(), None, data, key).await?;
        Ok(())
    }
}

/// A `capture.gap` event: what `entity` (and `entity_id`: the slot or the publication; none for
/// a table) missed, and why (`data`).
pub(super) fn gap_event<S: Store>(
    log: &AuditLog<S>,
    settings: &PostgresCapture,
    (entity, entity_id): (&str, Option<&str>),
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
        entity_id: entity_id.map(str::to_owned),
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
