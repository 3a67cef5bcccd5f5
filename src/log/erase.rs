//! Erasure (right to erasure, retention): an event's personal fields are deleted while its leaf,
//! and so the chain, the tree and every checkpoint, still verify; an `audit.erased` (or, for a
//! payload alone, `audit.redacted`) event, appended in the same transaction, records which
//! events lost which fields, by whom and why, without repeating the values.

use serde::Serialize;

use super::access_log::Access;
use super::{AuditLog, LogError, Recorded};
use crate::auth::Principal;
use crate::integrity::commitment::fully_erased;
use crate::integrity::erasure_record::erased_ranges;
use crate::integrity::verify::{ERASURE_EVENT_TYPE, REDACTION_EVENT_TYPE};
use crate::model::{
    Action, Erasure, ErasureTargets, Event, EventId, EventQuery, Field, FieldError, Filter,
    NewEvent, Order, Personal, RawEvent, TenantId,
};
use crate::store::Store;

/// The answer to an erasure by data subject.
#[derive(Debug, Serialize)]
pub struct SubjectErasure {
    /// How many events lost fields.
    pub erased: u64,
    /// The `audit.erased` event recording it; `None` when nothing was left to erase.
    pub record: Option<Event>,
    /// Events recorded with leaf version 1 that still name the subject: such a leaf holds the
    /// fields themselves, so only their payload could go.
    pub kept_in_version_1_leaves: u64,
}

impl<S: Store> AuditLog<S> {
    /// Erases one event's payload (`POST /events/{id}/redact`), recorded as `audit.redacted`.
    /// `Conflict` when the payload is already erased or there never was one; the `reason`
    /// must not be blank (`Invalid` naming `reason`).
    pub async fn redact(
        &self,
        principal: &Principal,
        id: EventId,
        reason: String,
    ) -> Result<Recorded, LogError> {
        let recorded = self.redaction(principal, id, reason).await?;
        self.record_access(principal, erasure_access("redact", &recorded.events))
            .await?;
        Ok(recorded)
    }

    async fn redaction(
        &self,
        principal: &Principal,
        id: EventId,
        reason: String,
    ) -> Result<Recorded, LogError> {
        let target = self.find(principal, id).await?;
        check_not_a_record(&target)?;
        if target.event_data.is_none() {
            let message = match target.redacted_at {
                Some(_) => format!("event {id} is already redacted"),
                None => format!("event {id} has no payload to redact"),
            };
            return Err(LogError::Conflict(message));
        }
        match self
            .record_erasure(principal, REDACTION_EVENT_TYPE, &target, reason)
            .await
        {
            // Another erasure took the payload first.
            Err(LogError::NothingErased) => Err(LogError::Conflict(format!(
                "event {id} is already redacted"
            ))),
            other => other,
        }
    }

    /// Erases every personal field of one event (`POST /events/{id}/erase`, `DELETE
    /// /delete_log/{id}`), recorded as `audit.erased`. Erasing an event again answers with the
    /// record of the erasure that left it as it is (`created: false`). An event recorded with
    /// leaf version 1 loses only its payload: its other fields are in its leaf as they are.
    pub async fn erase(
        &self,
        principal: &Principal,
        id: EventId,
        reason: String,
    ) -> Result<Recorded, LogError> {
        let recorded = self.erasure(principal, id, reason).await?;
        if recorded.created {
            self.record_access(principal, erasure_access("erase", &recorded.events))
                .await?;
        }
        Ok(recorded)
    }

    async fn erasure(
        &self,
        principal: &Principal,
        id: EventId,
        reason: String,
    ) -> Result<Recorded, LogError> {
        let mut target = self.find(principal, id).await?;
        check_not_a_record(&target)?;
        if !fully_erased(&target) {
            match self
                .record_erasure(principal, ERASURE_EVENT_TYPE, &target, reason)
                .await
            {
                // Another erasure, committed first, took what was left: answer with its record.
                Err(LogError::NothingErased) => target = self.find(principal, id).await?,
                other => return other,
            }
        }
        let record = match target.redacted_at {
            Some(at) => self.erasure_record(principal, &target, at).await?,
            None => None,
        };
        record
            .map(|record| Recorded {
                created: false,
                events: vec![record],
                replayed: vec![true],
            })
            .ok_or_else(|| {
                LogError::Conflict(match target.leaf_version {
                    1 => format!(
                        "event {id} was recorded with leaf version 1, whose leaf holds its \
                         fields as they are: only a payload can be erased, and it has none"
                    ),
                    _ => format!("event {id} holds no personal data to erase"),
                })
            })
    }

    /// Erases every personal field of every event of the tenant whose `field` (`user_identity`
    /// or `entity_id`) is `value` (`POST /erasures`), in one transaction with its `audit.erased`
    /// record. Nothing left to erase answers `erased: 0` and records nothing.
    ///
    /// The system log records the erasure by the field that named the subject, never its value.
    pub async fn erase_subject(
        &self,
        principal: &Principal,
        field: Personal,
        value: String,
        reason: String,
    ) -> Result<SubjectErasure, LogError> {
        let erasure = self
            .subject_erasure(principal, field, value, reason)
            .await?;
        if let Some(record) = &erasure.record {
            let mut access = erasure_access("erase_subject", std::slice::from_ref(record));
            access.details.insert("by".into(), field.name().into());
            access
                .details
                .insert("erased".into(), erasure.erased.into());
            self.record_access(principal, access).await?;
        }
        Ok(erasure)
    }

    async fn subject_erasure(
        &self,
        principal: &Principal,
        field: Personal,
        value: String,
        reason: String,
    ) -> Result<SubjectErasure, LogError> {
        let filter_field = match field {
            Personal::UserIdentity => Field::UserIdentity,
            Personal::EntityId => Field::EntityId,
            other => {
                return Err(LogError::Invalid(FieldError::new(
                    other.name(),
                    "a data subject is named by user_identity or entity_id",
                )));
            }
        };
        let (erasable, kept) = self.subject_events(principal, filter_field, &value).await?;
        if erasable == 0 {
            return Ok(SubjectErasure {
                erased: 0,
                record: None,
                kept_in_version_1_leaves: kept,
            });
        }
        let targets = ErasureTargets::Subject(field, value.clone());
        let appended = self
            .append_erasure(
                Self::tenant_of(principal),
                &principal.name,
                ERASURE_EVENT_TYPE,
                targets,
                None,
                reason,
            )
            .await;
        let record = match appended {
            // Another erasure of the subject, committed first, left nothing.
            Err(LogError::NothingErased) => {
                let (_, kept) = self.subject_events(principal, filter_field, &value).await?;
                return Ok(SubjectErasure {
                    erased: 0,
                    record: None,
                    kept_in_version_1_leaves: kept,
                });
            }
            other => other?,
        };
        let erased = record
            .event_data
            .as_ref()
            .and_then(crate::integrity::erasure_record::erased_ranges)
            .map_or(0, |ranges| {
                ranges
                    .iter()
                    .map(|(first, last)| (last - first + 1) as u64)
                    .sum()
            });
        let (_, kept) = self.subject_events(principal, filter_field, &value).await?;
        Ok(SubjectErasure {
            erased,
            record: Some(record),
            kept_in_version_1_leaves: kept,
        })
    }

    /// How many events whose `field` is `value` an erasure could still take something from,
    /// and how many hold nothing more it could take but still name the subject (version 1).
    /// The service's own records are not counted: they are kept whole.
    async fn subject_events(
        &self,
        principal: &Principal,
        field: Field,
        value: &str,
    ) -> Result<(u64, u64), LogError> {
        let mut query = EventQuery {
            filters: vec![Filter::Equals(field, value.to_owned())],
            limit: EventQuery::MAX_LIMIT,
            ..EventQuery::default()
        };
        let (mut erasable, mut kept) = (0, 0);
        loop {
            let page = self.search(principal, &query).await?;
            let subject_events = page
                .events
                .iter()
                .filter(|event| !event.is_service_record());
            for event in subject_events {
                if fully_erased(event) {
                    kept += 1;
                } else {
                    erasable += 1;
                }
            }
            match page.events.last() {
                Some(last) if page.next_cursor.is_some() => query.after = Some(last.seq),
                _ => return Ok((erasable, kept)),
            }
        }
    }

    /// The record of the erasure that left `target` as it is: committed at `at`, its
    /// `redacted_at`, and naming its `seq` (or, from before records named ranges, its id).
    /// Several records may share a commit time (erasures committed in one batch).
    async fn erasure_record(
        &self,
        principal: &Principal,
        target: &Event,
        at: time::OffsetDateTime,
    ) -> Result<Option<Event>, LogError> {
        let names_target = |record: &Event| {
            record.recorded_at == at
                && match record.event_data.as_ref().and_then(erased_ranges) {
                    Some(ranges) => ranges
                        .iter()
                        .any(|(first, last)| (*first..=*last).contains(&target.seq.0)),
                    None => record.amends == Some(target.id),
                }
        };
        for event_type in [ERASURE_EVENT_TYPE, REDACTION_EVENT_TYPE] {
            // A record's `occurred_at` is its commit time.
            let mut query = EventQuery {
                filters: vec![Filter::Equals(Field::EventType, event_type.into())],
                since: Some(at),
                limit: EventQuery::MAX_LIMIT,
                order: Order::Asc,
                ..EventQuery::default()
            };
            loop {
                let page = self.search(principal, &query).await?;
                if let Some(record) = page.events.iter().find(|e| names_target(e)) {
                    return Ok(Some(record.clone()));
                }
                match page.events.last() {
                    Some(last) if page.next_cursor.is_some() && last.recorded_at <= at => {
                        query.after = Some(last.seq);
                    }
                    _ => break,
                }
            }
        }
        Ok(None)
    }

    async fn record_erasure(
        &self,
        principal: &Principal,
        event_type: &str,
        target: &Event,
        reason: String,
    ) -> Result<Recorded, LogError> {
        let targets = ErasureTargets::Event(target.id);
        let record = self
            .append_erasure(
                Self::tenant_of(principal),
                &principal.name,
                event_type,
                targets,
                Some(target),
                reason,
            )
            .await?;
        Ok(Recorded {
            created: true,
            events: vec![record],
            replayed: vec![false],
        })
    }

    /// Appends the record of an erasure of `targets` to `tenant`'s log, by `actor`; its commit
    /// erases them. `NothingErased` (and nothing recorded) when another erasure, committed
    /// first, left nothing of them to erase. `target` is the one event erased, when there is
    /// one: the record names it by `amends` and `amends_hash`.
    pub(super) async fn append_erasure(
        &self,
        tenant: TenantId,
        actor: &str,
        event_type: &str,
        targets: ErasureTargets,
        target: Option<&Event>,
        reason: String,
    ) -> Result<Event, LogError> {
        if reason.trim().is_empty() {
            return Err(LogError::Invalid(FieldError::new(
                "reason",
                "must not be empty",
            )));
        }
        // What the erasure applies to, whatever the targets still hold: a redaction takes the
        // payload, any other erasure every personal field. Verify holds the fields an event lost
        // to those its record names.
        let fields = match event_type {
            REDACTION_EVENT_TYPE => vec![Personal::EventData],
            _ => Personal::ALL.to_vec(),
        };
        // The reason is checked as a payload would be (length, characters) before it is
        // written into the record's.
        let placeholder = serde_json::value::to_raw_value(&serde_json::json!({ "reason": reason }))
            .map_err(|e| LogError::Internal(e.into()))?;
        let raw = RawEvent {
            entity: target.and_then(|t| t.entity.clone()),
            ..RawEvent::service_record(event_type, actor, placeholder)
        };
        let mut record =
            NewEvent::parse_own(raw, &self.limits).map_err(|e| match e.field.as_str() {
                field if field.starts_with("event_data") => {
                    LogError::Invalid(FieldError::new("reason", e.message))
                }
                _ => LogError::Invalid(e),
            })?;
        record.amends = target.map(|t| t.id);
        record.amends_hash = target.map(|t| t.hash);
        record.erases = Some(Erasure {
            targets,
            fields,
            reason,
        });
        let recorded = self.record_in(tenant, actor, vec![record]).await?;
        recorded
            .events
            .into_iter()
            .next()
            .ok_or_else(|| LogError::Internal(anyhow::anyhow!("append returned no event")))
    }
}

/// The service's own records are kept whole: an erasure record's payload is what accounts for
/// the fields it erased.
fn check_not_a_record(target: &Event) -> Result<(), LogError> {
    if target.is_service_record() {
        return Err(LogError::Conflict(format!(
            "event {} ({}) is one of the service's own records, which are kept whole and \
             cannot be erased (which is why the reason given for an erasure should hold no \
             personal data)",
            target.id, target.event_type
        )));
    }
    Ok(())
}

/// An erasure as the system log records it: the record that the tenant's log holds of it (its
/// id and `seq`), which names what was erased.
fn erasure_access<'a>(operation: &'a str, records: &[Event]) -> Access<'a> {
    let mut details = serde_json::Map::new();
    if let Some(record) = records.first() {
        details.insert("record".into(), record.id.to_string().into());
        details.insert("record_seq".into(), record.seq.0.into());
    }
    Access::change(operation, Action::Delete, details)
}
