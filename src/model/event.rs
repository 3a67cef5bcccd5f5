//! The event as a client sends it, as the service accepts it, and as the log stores it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::digest::Digest;
use super::erasure::{Erased, Erasure, SaltSecret};
#[cfg(test)]
use super::fields::Flag;
use super::fields::event_fields;
use super::ids::{EventId, Seq, TenantId};
use super::payload;

/// CRUD verb describing what was done to the entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Read,
    Update,
    Delete,
}

impl Action {
    pub const ALL: [Action; 4] = [Self::Create, Self::Read, Self::Update, Self::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }

    /// Case-insensitive, so seed 2's `CREATE`/`UPDATE` map onto the same verbs.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Self::Success),
            "failure" => Some(Self::Failure),
            _ => None,
        }
    }
}

/// The body of `POST /events` exactly as accepted on the wire: anything not listed is refused.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    /// What happened, e.g. `customer.billed`.
    pub event_type: String,
    /// Who did it.
    pub user_identity: String,
    #[serde(default)]
    pub action: Option<Action>,
    #[serde(default)]
    pub entity: Option<String>,
    #[serde(default)]
    pub entity_id: Option<String>,
    #[serde(default)]
    pub property: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ip: Option<IpAddr>,
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// When it happened (RFC 3339); default: when it was recorded.
    #[serde(default, deserialize_with = "rfc3339_without_leap_second")]
    pub occurred_at: Option<OffsetDateTime>,
    /// Any JSON object. Kept as the text received: numbers are checked against their digits
    /// (`model::payload`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub event_data: Option<Box<RawValue>>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

impl RawEvent {
    /// A record the service writes about its own work (an erasure, a dropped partition): of
    /// `event_type`, by `actor`, `action` `delete`, with `event_data` and nothing else.
    pub fn service_record(event_type: &str, actor: &str, event_data: Box<RawValue>) -> Self {
        Self {
            event_type: event_type.to_owned(),
            user_identity: actor.to_owned(),
            action: Some(Action::Delete),
            entity: None,
            entity_id: None,
            property: None,
            source: None,
            ip: None,
            outcome: None,
            occurred_at: None,
            event_data: Some(event_data),
            idempotency_key: None,
        }
    }
}

/// An RFC 3339 timestamp, refusing a leap second (`23:59:60`), which neither database can hold
/// and which the `time` crate would silently turn into `23:59:59.999999999`.
pub fn parse_rfc3339(text: &str) -> Result<OffsetDateTime, &'static str> {
    if text.get(17..19) == Some("60") {
        return Err("a leap second (:60) cannot be stored; send :59.999999 or the next second");
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| "must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")
}

fn rfc3339_without_leap_second<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<OffsetDateTime>, D::Error> {
    Option::<String>::deserialize(deserializer)?
        .map(|text| parse_rfc3339(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// Event types the service records itself (amendment, redaction); clients may not send them.
pub const RESERVED_EVENT_TYPE_PREFIX: &str = "audit.";

/// The event type of an amendment that names none and may not inherit the original's (seed 2's
/// `PUT /update_log` by a caller who cannot read the original). Reserved like every `audit.*`
/// type, but it holds what the client sent, not a record of the service's own: see
/// [`is_service_record`].
pub const AMENDMENT_EVENT_TYPE: &str = "audit.amendment";

/// Whether an event of `event_type` is one of the service's own records (`audit.erased`,
/// `audit.redacted`, `audit.dropped`, `audit.access`, …), which are kept whole: no erasure by
/// id, by subject or by retention takes anything from them (an erasure record's payload is what
/// accounts for the fields it erased). The one rule for that; every erasure path asks it.
///
/// Every reserved type is one, except those the service writes on a client's behalf with the
/// client's fields ([`AMENDMENT_EVENT_TYPE`]): those are erasable like any client event. A
/// reserved type not named here, past or future, stays whole (fails closed).
pub fn is_service_record(event_type: &str) -> bool {
    event_type.starts_with(RESERVED_EVENT_TYPE_PREFIX) && event_type != AMENDMENT_EVENT_TYPE
}

/// Size limits applied while parsing; configurable because deployments differ.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of UTF-8 per text field, at most [`Limits::MAX_FIELD_LEN`].
    pub max_field_len: usize,
    pub max_batch_events: usize,
}

impl Limits {
    /// The largest `max_field_len` that every backend can store: PostgreSQL refuses a B-tree entry
    /// over 2704 bytes, and its widest index holds two text fields (`entity`, `entity_id`) beside
    /// the tenant and `seq`.
    pub const MAX_FIELD_LEN: usize = 1200;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_field_len: 1024,
            max_batch_events: 1000,
        }
    }
}

/// Why an input was refused, naming the offending field (with its batch index when there is one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field with the event's position in a batch: `[3].event_type`.
    pub fn at_index(self, index: usize) -> Self {
        Self {
            field: format!("[{index}].{}", self.field),
            message: self.message,
        }
    }
}

/// An event that passed validation and waits to be appended. It cannot be invalid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    pub event_type: String,
    pub user_identity: String,
    pub action: Option<Action>,
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    pub property: Option<String>,
    pub source: Option<String>,
    pub ip: Option<String>,
    pub outcome: Option<Outcome>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub occurred_at: Option<OffsetDateTime>,
    /// Enters the fingerprint in canonical form, not through this derive.
    #[serde(skip)]
    pub event_data: Option<Map<String, Value>>,
    pub idempotency_key: Option<String>,
    /// The event this one amends or redacts; set by the server, never by the client.
    pub amends: Option<EventId>,
    /// The chain hash of that event, so the reference itself is tamper-evident.
    pub amends_hash: Option<Digest>,
    /// This event records an erasure: appending it erases the targets' fields.
    #[serde(skip)]
    pub erases: Option<Erasure>,
}

impl NewEvent {
    /// Validates a client's event.
    pub fn parse(raw: RawEvent, limits: &Limits) -> Result<Self, FieldError> {
        if raw.event_type.starts_with(RESERVED_EVENT_TYPE_PREFIX) {
            return Err(FieldError::new(
                "event_type",
                format!(
                    "`{RESERVED_EVENT_TYPE_PREFIX}*` event types are reserved for the service's own records"
                ),
            ));
        }
        Self::parse_own(raw, limits)
    }

    /// Validates an event the service records itself, which may use a reserved type.
    pub fn parse_own(raw: RawEvent, limits: &Limits) -> Result<Self, FieldError> {
        let required = |name: &str, value: String| -> Result<String, FieldError> {
            check_text(name, &value, limits)?;
            Ok(value)
        };
        let optional = |name: &str, value: Option<String>| -> Result<Option<String>, FieldError> {
            if let Some(v) = &value {
                check_text(name, v, limits)?;
            }
            Ok(value)
        };
        Ok(Self {
            event_type: required("event_type", raw.event_type)?,
            user_identity: required("user_identity", raw.user_identity)?,
            action: raw.action,
            entity: optional("entity", raw.entity)?,
            entity_id: optional("entity_id", raw.entity_id)?,
            property: optional("property", raw.property)?,
            source: optional("source", raw.source)?,
            ip: raw.ip.map(|ip| ip.to_string()),
            outcome: raw.outcome,
            occurred_at: raw.occurred_at.map(check_time).transpose()?,
            event_data: raw.event_data.as_deref().map(payload::parse).transpose()?,
            idempotency_key: optional("idempotency_key", raw.idempotency_key)?,
            amends: None,
            amends_hash: None,
            erases: None,
        })
    }

    /// Fingerprint of what the client asked to record, so a retried request with the same
    /// idempotency key can be told apart from a different request reusing the key.
    pub fn fingerprint(&self) -> Digest {
        let data = self.event_data.as_ref().map(super::canonical::object_bytes);
        self.fingerprint_with(data.as_deref())
    }

    /// [`Self::fingerprint`], given the payload's canonical bytes (`canonical::object_bytes`)
    /// when the caller has them already.
    pub fn fingerprint_with(&self, canonical_data: Option<&[u8]>) -> Digest {
        let fields = serde_json::to_vec(self).unwrap_or_default();
        Digest::sha256(&[&fields, &[0], canonical_data.unwrap_or_default()])
    }
}

fn check_text(name: &str, value: &str, limits: &Limits) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(name, "must not be empty"));
    }
    if value.len() > limits.max_field_len {
        return Err(FieldError::new(
            name,
            format!(
                "is {} bytes long in UTF-8; the limit is {} bytes",
                value.len(),
                limits.max_field_len
            ),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(name, "must not contain control characters"));
    }
    Ok(())
}

/// Accepts instants from year 1 to 9999 in UTC (what RFC 3339 and both databases can represent),
/// kept to the microsecond.
fn check_time(t: OffsetDateTime) -> Result<OffsetDateTime, FieldError> {
    let utc = t
        .checked_to_offset(time::UtcOffset::UTC)
        .filter(|utc| (1..=9999).contains(&utc.year()))
        .ok_or_else(|| {
            FieldError::new("occurred_at", "must fall between years 1 and 9999 in UTC")
        })?;
    Ok(truncate_to_micros(utc))
}

/// Both databases keep microseconds; truncating up front keeps what is hashed equal to what is stored.
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// One client request's events: appended all together or not at all.
#[derive(Debug, Clone)]
pub struct Submission {
    pub tenant: TenantId,
    /// The authenticated user who sent it.
    pub recorded_by: String,
    pub events: Vec<NewEvent>,
    /// One per event, in order, when computed before the hand-off to the writer
    /// (`integrity::commitment::seal_submission`); empty otherwise, and the writer computes them.
    pub sealings: Vec<Sealing>,
}

impl Submission {
    /// A submission whose sealings the writer will compute.
    pub fn new(tenant: TenantId, recorded_by: impl Into<String>, events: Vec<NewEvent>) -> Self {
        Self {
            tenant,
            recorded_by: recorded_by.into(),
            events,
            sealings: Vec::new(),
        }
    }
}

/// What a new event's log entry needs that does not depend on where in the log it lands: the
/// request fingerprint, the event's salt secret, the fingerprint salted with it (the stored
/// `request_hash`), and the salted commitments to its personal fields in `Personal::ALL` order
/// (`None` for a field without a value). Computed on the submitting task so that the single
/// writer only numbers, links and hashes the leaves (`docs/integrity.md`, leaf version 2).
#[derive(Debug, Clone, PartialEq)]
pub struct Sealing {
    pub fingerprint: Digest,
    pub salt_secret: SaltSecret,
    pub request_hash: Digest,
    pub commitments: [Option<Digest>; 6],
}

event_fields! {
    /// An event as recorded in the log: the one declaration of its stored fields (see
    /// `model::fields`). Adding one here adds its column to both backends' statements; it then
    /// needs a migration per backend, and a place in the leaf or `NotInLeaf`. `Client` fields
    /// come from the body of `POST /events`, through [`RawEvent`] and [`NewEvent`].
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
    #[schema(description = "An event as recorded: the fields sent, the ones the log adds \
        (`id`, `seq`, `tenant`, `recorded_at`, `recorded_by`), and those that prove it \
        (docs/integrity.md)")]
    pub struct Event {
        id: EventId [Leaf] => Id,
        seq: Seq [Leaf],
        tenant: TenantId [Leaf],
        event_type: String [Client, Leaf] => EventType,
        /// Required on input; `None` only once erased.
        user_identity: Option<String> [Client, Leaf, Personal, Erasable] => UserIdentity,
        action: Option<Action> [Client, Leaf] => Action,
        entity: Option<String> [Client, Leaf] => Entity,
        entity_id: Option<String> [Client, Leaf, Personal, Erasable] => EntityId,
        property: Option<String> [Client, Leaf, Personal, Erasable] => Property,
        source: Option<String> [Client, Leaf] => Source,
        ip: Option<String> [Client, Leaf, Personal, Erasable] => Ip,
        outcome: Option<Outcome> [Client, Leaf] => Outcome,
        #[serde(with = "time::serde::rfc3339")]
        occurred_at: OffsetDateTime [Client, Leaf],
        #[serde(with = "time::serde::rfc3339")]
        recorded_at: OffsetDateTime [Leaf],
        recorded_by: String [Leaf] => RecordedBy,
        /// The payload; `None` when there was none or it was erased (see `redacted_at`).
        #[schema(value_type = Option<Object>)]
        event_data: Option<Map<String, Value>> [Client, NotInLeaf, Personal, Erasable],
        /// Leaf version 1 only: SHA-256 of the payload's canonical form, kept when the payload
        /// is erased so the leaf still verifies. `None` in version 2, which commits to the
        /// payload with a salt instead.
        event_data_hash: Option<Digest> [Leaf],
        /// When the latest erasure of this event's fields committed; the `audit.redacted` or
        /// `audit.erased` event recorded at that instant says who erased what, and why.
        #[serde(with = "time::serde::rfc3339::option")]
        redacted_at: Option<OffsetDateTime> [NotInLeaf, Erasable],
        idempotency_key: Option<String> [Client, Leaf, Personal, Erasable] => IdempotencyKey,
        amends: Option<EventId> [Leaf] => Amends,
        amends_hash: Option<Digest> [Leaf],
        /// Fingerprint of the request that created it (see [`NewEvent::fingerprint`]), salted
        /// with `salt_secret` in version 2.
        #[serde(skip)]
        request_hash: Digest [NotInLeaf],
        /// Version 2: the secret the personal fields' salts derive from, until an erasure.
        salt_secret: Option<SaltSecret> [NotInLeaf, Erasable],
        /// Version 2, once erased: the erased fields' commitments and the others' salts.
        erased: Option<Erased> [NotInLeaf, Erasable],
        /// The leaf encoding: 1 or 2 (`docs/integrity.md`); 1 in an export written before
        /// version 2, which does not name it.
        #[serde(default = "leaf_version_1")]
        leaf_version: i64 [NotInLeaf],
        /// RFC 6962 leaf hash of the event's canonical encoding (`docs/integrity.md`).
        leaf_hash: Digest [NotInLeaf],
        prev_hash: Digest [NotInLeaf],
        hash: Digest [NotInLeaf],
    }
}

impl Event {
    /// One of the service's own records, kept whole by every erasure ([`is_service_record`]).
    pub fn is_service_record(&self) -> bool {
        is_service_record(&self.event_type)
    }
}

fn leaf_version_1() -> i64 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records the service writes about its own work are kept whole; an amendment, which
    /// holds the client's fields, is not one; nor is a client's own type.
    #[test]
    fn only_the_services_own_records_are_kept_whole() {
        use crate::integrity::dropped::DROP_EVENT_TYPE;
        use crate::integrity::verify::{ERASURE_EVENT_TYPE, REDACTION_EVENT_TYPE};
        use crate::log::access_log::ACCESS_EVENT_TYPE;
        for record in [
            ERASURE_EVENT_TYPE,
            REDACTION_EVENT_TYPE,
            DROP_EVENT_TYPE,
            ACCESS_EVENT_TYPE,
            "audit.log_deleted",
            "audit.anything_else",
        ] {
            assert!(is_service_record(record), "{record}");
        }
        for client in [
            AMENDMENT_EVENT_TYPE,
            "customer.updated",
            "auditing",
            "audit",
        ] {
            assert!(!is_service_record(client), "{client}");
        }
    }

    fn raw(json: &str) -> Result<RawEvent, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// What a backend binds from an event decodes back into the same event, field by field in
    /// declared order, each cell of its declared kind.
    #[test]
    fn an_event_decodes_from_its_columns() {
        let hash = "ab".repeat(32);
        let event: Event = serde_json::from_value(serde_json::json!({
            "id": "01a207d4-4d84-7636-8efc-db85b4ea489c", "seq": 7, "tenant": "t",
            "event_type": "e", "user_identity": "u", "action": "update", "entity": "n",
            "entity_id": "1", "property": "p", "source": "s", "ip": "::1", "outcome": "failure",
            "occurred_at": "2024-05-01T12:00:00.5Z", "recorded_at": "2024-05-01T12:00:01Z",
            "recorded_by": "admin", "event_data": {"a": [1, {"b": null}]},
            "event_data_hash": hash, "redacted_at": "2024-05-02T00:00:00Z",
            "idempotency_key": "k", "amends": "01a207d4-4d84-7636-8efc-db85b4ea489d",
            "amends_hash": hash, "salt_secret": hash,
            "erased": {"commitments": {"ip": hash}, "salts": {"entity_id": hash}},
            "leaf_version": 2, "leaf_hash": hash, "prev_hash": hash, "hash": hash,
        }))
        .unwrap();
        let columns = event.columns();
        let mut declared = columns.iter().zip(FIELDS.iter());
        let decoded = Event::from_columns(
            |name, kind| {
                let (cell, field) = declared.next().expect("no more columns than fields");
                assert_eq!((field.name, field.kind), (name, kind));
                assert!(
                    cell.as_ref().is_none_or(|cell| cell.kind() == kind),
                    "{name}"
                );
                Ok::<_, String>(cell.clone())
            },
            |name, detail| format!("{name}: {detail}"),
        )
        .unwrap();
        assert_eq!(decoded, event);
        assert!(columns.iter().all(Option::is_some), "every column was set");
    }

    /// Every field declared `Client` is accepted in a body; the compiler sees to the rest of the
    /// way (`NewEvent`, then `chain_events` building the `Event`).
    #[test]
    fn every_client_field_is_accepted_in_a_body() {
        for field in FIELDS.iter().filter(|field| field.is(Flag::Client)) {
            let mut body = serde_json::json!({"event_type": "a", "user_identity": "b"});
            body[field.name] = Value::Null;
            if let Err(error) = serde_json::from_value::<RawEvent>(body) {
                assert!(!error.to_string().contains("unknown field"), "{error}");
            }
        }
    }

    #[test]
    fn seed_one_body_parses() {
        let body = r#"{"event_type":"old_account","user_identity":"Asad_Zaman",
            "event_data":{"account_id":1346,"email":"john.doe@example.com"}}"#;
        let event = NewEvent::parse(raw(body).unwrap(), &Limits::default()).unwrap();
        assert_eq!(event.event_type, "old_account");
        assert_eq!(event.event_data.unwrap()["account_id"], 1346);
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = raw(r#"{"event_type":"a","user_identity":"b","colour":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"));
    }

    #[test]
    fn event_data_must_be_an_object() {
        let array = raw(r#"{"event_type":"a","user_identity":"b","event_data":[1]}"#).unwrap();
        let err = NewEvent::parse(array, &Limits::default()).unwrap_err();
        assert_eq!(err.field, "event_data");
    }

    #[test]
    fn blank_and_over_long_strings_are_refused() {
        let limits = Limits {
            max_field_len: 4,
            ..Limits::default()
        };
        let err = NewEvent::parse(
            raw(r#"{"event_type":" ","user_identity":"b"}"#).unwrap(),
            &limits,
        )
        .unwrap_err();
        assert_eq!(err.field, "event_type");
        let err = NewEvent::parse(
            raw(r#"{"event_type":"a","user_identity":"bbbbb"}"#).unwrap(),
            &limits,
        )
        .unwrap_err();
        assert_eq!(err.field, "user_identity");
    }

    #[test]
    fn times_outside_years_1_to_9999_in_utc_are_refused() {
        let parse = |t: &str| {
            let json = format!(r#"{{"event_type":"a","user_identity":"b","occurred_at":"{t}"}}"#);
            NewEvent::parse(raw(&json).unwrap(), &Limits::default())
        };
        assert_eq!(
            parse("0000-01-01T00:30:00+01:00").unwrap_err().field,
            "occurred_at"
        );
        assert_eq!(
            parse("9999-12-31T23:30:00-01:00").unwrap_err().field,
            "occurred_at"
        );
        let leap = r#"{"event_type":"a","user_identity":"b","occurred_at":"2016-12-31T23:59:60Z"}"#;
        let err = raw(leap).unwrap_err().to_string();
        assert!(
            err.contains("leap second"),
            "a leap second is refused, not turned into another instant: {err}"
        );
        let ok = parse("2024-05-01T12:00:00.1234567+02:00").unwrap();
        assert_eq!(ok.occurred_at.unwrap().nanosecond(), 123_456_000);
    }

    #[test]
    fn numbers_a_double_cannot_hold_exactly_are_refused() {
        let parse = |data: &str| {
            let json = format!(r#"{{"event_type":"a","user_identity":"b","event_data":{data}}}"#);
            NewEvent::parse(raw(&json).unwrap(), &Limits::default())
        };
        assert!(parse(r#"{"n": 9007199254740991, "f": 1.5e300, "s": "9007199254740993"}"#).is_ok());
        let err = parse(r#"{"a": {"b": [1, 9007199254740993]}}"#).unwrap_err();
        assert_eq!(err.field, "event_data.a.b[1]");
        assert!(parse(r#"{"n": -9007199254740993}"#).is_err());
        assert!(parse(r#"{"n": 333333333.33333329}"#).is_err());
        assert!(parse(r#"{"n": 18446744073709551615}"#).is_err());
    }

    #[test]
    fn action_is_case_insensitive_for_seed_two() {
        assert_eq!(Action::parse("CREATE"), Some(Action::Create));
        assert_eq!(Action::parse("frobnicate"), None);
    }

    #[test]
    fn fingerprint_ignores_key_order_in_payload() {
        let a =
            raw(r#"{"event_type":"a","user_identity":"b","event_data":{"x":1,"y":2}}"#).unwrap();
        let b =
            raw(r#"{"event_type":"a","user_identity":"b","event_data":{"y":2,"x":1}}"#).unwrap();
        let limits = Limits::default();
        assert_eq!(
            NewEvent::parse(a, &limits).unwrap().fingerprint(),
            NewEvent::parse(b, &limits).unwrap().fingerprint()
        );
    }
}
