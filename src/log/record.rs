//! Recording: validated events appended atomically through the writer, batches checked as a
//! whole, and amendments that name the event they correct.

use std::collections::HashSet;

use serde_json::value::RawValue;
use time::OffsetDateTime;

use super::access_log::Access;
use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::integrity::commitment;
use crate::model::event::{AMENDMENT_EVENT_TYPE, RESERVED_EVENT_TYPE_PREFIX};
use crate::model::{Action, Event, EventId, FieldError, NewEvent, RawEvent, Submission, TenantId};
use crate::store::{Appended, Store};

/// What an append did: `created` is false when every event was an idempotent replay;
/// `replayed[i]` says whether `events[i]` was one.
#[derive(Debug)]
pub struct Recorded {
    pub created: bool,
    pub events: Vec<Event>,
    pub replayed: Vec<bool>,
}

/// What a caller may set on an amendment (seed 2's `PUT /update_log`); every field is optional.
#[derive(Debug, Default)]
pub struct Amendment {
    pub user_identity: Option<String>,
    pub event_type: Option<String>,
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    pub property: Option<String>,
    pub occurred_at: Option<OffsetDateTime>,
    pub event_data: Option<Box<RawValue>>,
    pub idempotency_key: Option<String>,
}

impl<S: Store> AuditLog<S> {
    /// Validates one client event and appends it.
    pub async fn record_one(
        &self,
        principal: &Principal,
        raw: RawEvent,
    ) -> Result<Recorded, LogError> {
        let event = NewEvent::parse(raw, &self.limits).map_err(LogError::Invalid)?;
        self.record(principal, vec![event]).await
    }

    /// Validates a client's batch (1 to `max_batch_events` events, idempotency keys unique
    /// within it) and appends it atomically: all of it or nothing. Errors name the index,
    /// e.g. `[3].event_type`.
    pub async fn record_batch(
        &self,
        principal: &Principal,
        raws: Vec<RawEvent>,
    ) -> Result<Recorded, LogError> {
        let events = self.parse_batch(raws).map_err(LogError::Invalid)?;
        self.record(principal, events).await
    }

    /// Validates one client event without recording it (bulk ingest gathers them in chunks).
    pub fn parse(&self, raw: RawEvent) -> Result<NewEvent, LogError> {
        NewEvent::parse(raw, &self.limits).map_err(LogError::Invalid)
    }

    /// Appends already validated events atomically through the writer, as the caller.
    pub async fn record(
        &self,
        principal: &Principal,
        events: Vec<NewEvent>,
    ) -> Result<Recorded, LogError> {
        self.record_in(Self::tenant_of(principal), &principal.name, events)
            .await
    }

    /// Appends already validated events atomically to `tenant`'s log, recorded by `recorded_by`:
    /// for what no authenticated caller sends (the service's own records, a broker's messages).
    pub async fn record_in(
        &self,
        tenant: TenantId,
        recorded_by: &str,
        events: Vec<NewEvent>,
    ) -> Result<Recorded, LogError> {
        let mut submission = Submission::new(tenant, recorded_by, events);
        // Here, on the caller's task, rather than on the single writer that every append waits for.
        commitment::seal_submission(&mut submission);
        match self.writer.append(submission).await? {
            Appended::Created { events, replayed } => Ok(Recorded {
                created: true,
                events,
                replayed,
            }),
            Appended::Replayed(events) => Ok(Recorded {
                created: false,
                replayed: vec![true; events.len()],
                events,
            }),
            Appended::KeyConflict(key) => Err(LogError::IdempotencyConflict(key)),
            Appended::NothingErased => Err(LogError::NothingErased),
        }
    }

    /// Records an amendment: a new `update` event naming the original by id and chain hash; the
    /// original stays untouched.
    ///
    /// Fields the amendment leaves out are taken from the original only when the caller may
    /// read it; a write-only caller learns nothing of the original beyond its existence, so its
    /// amendment carries just what it sent (`event_type` defaulting to `audit.amendment`, the
    /// `user_identity` to the caller).
    pub async fn amend(
        &self,
        principal: &Principal,
        original: EventId,
        amendment: Amendment,
    ) -> Result<Recorded, LogError> {
        let original = self.find(principal, original).await?;
        if let Some(event_type) = &amendment.event_type
            && event_type.starts_with(RESERVED_EVENT_TYPE_PREFIX)
        {
            return Err(LogError::Invalid(FieldError::new(
                "event_type",
                format!(
                    "`{RESERVED_EVENT_TYPE_PREFIX}*` event types are reserved for the service's own records"
                ),
            )));
        }
        let inherited = principal
            .may(crate::model::Scope::EventsRead)
            .then_some(&original);
        // Inheriting the original's fields reads them, and the answer shows them: a read.
        if inherited.is_some() {
            let mut details = serde_json::Map::new();
            details.insert("id".into(), original.id.to_string().into());
            details.insert("returned".into(), 1.into());
            self.record_access(principal, Access::read("amend", details))
                .await?;
        }
        let inherit = |own: Option<String>, pick: fn(&Event) -> Option<String>| {
            own.or_else(|| inherited.and_then(pick))
        };
        let raw = RawEvent {
            event_type: inherit(amendment.event_type, |e| Some(e.event_type.clone()))
                .filter(|t| !t.starts_with(RESERVED_EVENT_TYPE_PREFIX))
                .unwrap_or_else(|| AMENDMENT_EVENT_TYPE.into()),
            user_identity: inherit(amendment.user_identity, |e| e.user_identity.clone())
                .unwrap_or_else(|| principal.name.clone()),
            action: Some(Action::Update),
            entity: inherit(amendment.entity, |e| e.entity.clone()),
            entity_id: inherit(amendment.entity_id, |e| e.entity_id.clone()),
            property: inherit(amendment.property, |e| e.property.clone()),
            source: inherit(None, |e| e.source.clone()),
            ip: None,
            outcome: None,
            occurred_at: amendment.occurred_at,
            event_data: amendment.event_data,
            idempotency_key: amendment.idempotency_key,
        };
        // The client's own event_type was checked above; the default is the service's own type.
        let mut event = NewEvent::parse_own(raw, &self.limits).map_err(LogError::Invalid)?;
        event.amends = Some(original.id);
        event.amends_hash = Some(original.hash);
        self.record(principal, vec![event]).await
    }

    fn parse_batch(&self, raws: Vec<RawEvent>) -> Result<Vec<NewEvent>, FieldError> {
        let limits = &self.limits;
        if raws.is_empty() {
            return Err(FieldError::new(
                "[]",
                "a batch must contain at least one event",
            ));
        }
        if raws.len() > limits.max_batch_events {
            return Err(FieldError::new(
                "[]",
                format!(
                    "a batch holds at most {} events; this one has {}",
                    limits.max_batch_events,
                    raws.len()
                ),
            ));
        }
        let mut keys = HashSet::new();
        raws.into_iter()
            .enumerate()
            .map(|(index, raw)| {
                let event = NewEvent::parse(raw, limits).map_err(|e| e.at_index(index))?;
                if let Some(key) = &event.idempotency_key
                    && !keys.insert(key.clone())
                {
                    return Err(FieldError::new(
                        "idempotency_key",
                        "is used by another event of the same batch",
                    )
                    .at_index(index));
                }
                Ok(event)
            })
            .collect()
    }
}
