//! Leaf hashes and the hash chain, computed by the writer while it holds the chain head.

use serde::Serialize;
use serde_json::{Map, Value};

use super::commitment::{CommitmentError, commitments};
use super::merkle::Frontier;
use super::tiles::FullTile;
use crate::model::Digest;
use crate::model::canonical;
use crate::model::{Event, EventId, NewEvent, SaltSecret, Sealing, Seq, TenantId};

/// The leaf encoding new events get; bumped whenever the set or meaning of hashed fields
/// changes. Events keep the version they were recorded with (`Event::leaf_version`).
pub const LEAF_VERSION: i64 = 2;

/// The fields that enter a version 1 leaf hash, in the form hashed (see `docs/integrity.md`).
/// `event_data` enters only through its own hash, so a payload can later be redacted while the
/// leaf — and so the chain — still verifies.
///
/// Declared in sorted key order, with only strings and small integers, so serde_json's compact
/// output of it *is* its RFC 8785 form (a unit test holds this to `serde_jcs`).
#[derive(Serialize)]
struct LeafFields<'a> {
    action: Option<&'a str>,
    amends: Option<String>,
    amends_hash: Option<String>,
    entity: Option<&'a str>,
    entity_id: Option<&'a str>,
    event_data_hash: Option<String>,
    event_type: &'a str,
    id: String,
    idempotency_key: Option<&'a str>,
    ip: Option<&'a str>,
    occurred_at: String,
    outcome: Option<&'a str>,
    property: Option<&'a str>,
    recorded_at: String,
    recorded_by: &'a str,
    seq: i64,
    source: Option<&'a str>,
    tenant: &'a str,
    user_identity: Option<&'a str>,
    v: u32,
}

/// The fields that enter a version 2 leaf: those of version 1, except that each personal field
/// (and the payload, in place of `event_data_hash`) is its salted commitment in hex
/// (`integrity::commitment`). Sorted and JCS-ready as [`LeafFields`] is.
#[derive(Serialize)]
struct LeafFieldsV2<'a> {
    action: Option<&'a str>,
    amends: Option<String>,
    amends_hash: Option<String>,
    entity: Option<&'a str>,
    entity_id: Option<String>,
    event_data: Option<String>,
    event_type: &'a str,
    id: String,
    idempotency_key: Option<String>,
    ip: Option<String>,
    occurred_at: String,
    outcome: Option<&'a str>,
    property: Option<String>,
    recorded_at: String,
    recorded_by: &'a str,
    seq: i64,
    source: Option<&'a str>,
    tenant: &'a str,
    user_identity: Option<String>,
    v: u32,
}

/// Why an event's leaf cannot be built from what is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeafError {
    #[error("unknown leaf version {0}")]
    UnknownVersion(i64),
    #[error(transparent)]
    Commitment(#[from] CommitmentError),
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("formatting a UTC timestamp: {e}"))
}

/// RFC 6962 leaf hash: SHA-256(0x00 ‖ canonical leaf bytes). It is the same before and after
/// an erasure: version 1 uses the stored `event_data_hash`, version 2 the commitments that an
/// erasure keeps.
pub fn leaf_hash(event: &Event) -> Result<Digest, LeafError> {
    Ok(Digest::sha256(&[&[0x00], &leaf_bytes(event)?]))
}

/// The canonical encoding of an event's leaf, in the event's leaf version: the entry that
/// `tile/entries` serves.
pub fn leaf_bytes(event: &Event) -> Result<Vec<u8>, LeafError> {
    let bytes = match event.leaf_version {
        1 => serde_json::to_vec(&leaf_v1(event)),
        2 => serde_json::to_vec(&leaf_v2(event, commitments(event)?)),
        other => return Err(LeafError::UnknownVersion(other)),
    };
    Ok(bytes.unwrap_or_else(|e| unreachable!("strings and integers: {e}")))
}

fn leaf_v1(event: &Event) -> LeafFields<'_> {
    LeafFields {
        v: 1,
        tenant: event.tenant.as_str(),
        seq: event.seq.0,
        id: event.id.to_string(),
        event_type: &event.event_type,
        user_identity: event.user_identity.as_deref(),
        action: event.action.map(|a| a.as_str()),
        entity: event.entity.as_deref(),
        entity_id: event.entity_id.as_deref(),
        property: event.property.as_deref(),
        source: event.source.as_deref(),
        ip: event.ip.as_deref(),
        outcome: event.outcome.map(|o| o.as_str()),
        occurred_at: rfc3339(event.occurred_at),
        recorded_at: rfc3339(event.recorded_at),
        recorded_by: &event.recorded_by,
        idempotency_key: event.idempotency_key.as_deref(),
        amends: event.amends.map(|id| id.to_string()),
        amends_hash: event.amends_hash.map(|h| h.to_hex()),
        event_data_hash: event.event_data_hash.map(|h| h.to_hex()),
    }
}

/// A version 2 leaf hash, given the event's commitments (in `Personal::ALL` order) instead of
/// computing them: for a new event, whose commitments were computed with its sealing.
fn leaf_hash_v2(event: &Event, commitments: [Option<Digest>; 6]) -> Digest {
    let bytes = serde_json::to_vec(&leaf_v2(event, commitments))
        .unwrap_or_else(|e| unreachable!("strings and integers: {e}"));
    Digest::sha256(&[&[0x00], &bytes])
}

fn leaf_v2(event: &Event, commitments: [Option<Digest>; 6]) -> LeafFieldsV2<'_> {
    // In `Personal::ALL` order.
    let [
        entity_id,
        event_data,
        idempotency_key,
        ip,
        property,
        user_identity,
    ] = commitments.map(|commitment| commitment.map(|digest| digest.to_hex()));
    LeafFieldsV2 {
        v: 2,
        tenant: event.tenant.as_str(),
        seq: event.seq.0,
        id: event.id.to_string(),
        event_type: &event.event_type,
        user_identity,
        action: event.action.map(|a| a.as_str()),
        entity: event.entity.as_deref(),
        entity_id,
        property,
        source: event.source.as_deref(),
        ip,
        outcome: event.outcome.map(|o| o.as_str()),
        occurred_at: rfc3339(event.occurred_at),
        recorded_at: rfc3339(event.recorded_at),
        recorded_by: &event.recorded_by,
        idempotency_key,
        amends: event.amends.map(|id| id.to_string()),
        amends_hash: event.amends_hash.map(|h| h.to_hex()),
        event_data,
    }
}

/// A request fingerprint as a version 2 event stores it: salted with the event's secret, so
/// that once an erasure deleted the secret it confirms no guess about the request.
pub fn salted_fingerprint(secret: &SaltSecret, fingerprint: &Digest) -> Digest {
    Digest::sha256(&[secret.as_bytes(), fingerprint.as_bytes()])
}

/// Whether `fingerprint` is the one `event` was recorded with.
pub fn same_request(event: &Event, fingerprint: &Digest) -> bool {
    match &event.salt_secret {
        Some(secret) => event.request_hash == salted_fingerprint(secret, fingerprint),
        None if event.leaf_version == 1 => event.request_hash == *fingerprint,
        None => false,
    }
}

/// What a payload contributes to its event's leaf.
pub fn event_data_hash(data: &Map<String, Value>) -> Digest {
    Digest::sha256(&[&canonical::object_bytes(data)])
}

/// The chain link: SHA-256(prev_hash ‖ leaf_hash).
pub fn chain_hash(prev: &Digest, leaf: &Digest) -> Digest {
    Digest::sha256(&[prev.as_bytes(), leaf.as_bytes()])
}

/// Where a tenant's log currently ends: the chain's last link, the Merkle frontier, and the last
/// event's `recorded_at` (`None` before the first event), which the next may not precede.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chained {
    pub seq: Seq,
    pub hash: Digest,
    pub frontier: Frontier,
    pub recorded_at: Option<time::OffsetDateTime>,
    /// The first `seq` from which `recorded_at` never decreases: 1, or for a log that existed
    /// before the service kept it in order, the first event recorded after that upgrade.
    pub recorded_at_ordered_from: Seq,
}

impl Chained {
    pub fn genesis() -> Self {
        Self {
            seq: Seq(0),
            hash: Digest::ZERO,
            frontier: Frontier::default(),
            recorded_at: None,
            recorded_at_ordered_from: Seq(1),
        }
    }
}

/// Log entries made from accepted events, and the hash tiles they fill.
pub struct Linked {
    pub events: Vec<Event>,
    pub tiles: Vec<FullTile>,
}

/// Turns accepted events, each with its sealing, into log entries following `head`: the next
/// `seq`s, the commit time, the leaf and chain hashes and the filled tiles. Advances `head` past
/// them.
pub fn chain_events(
    head: &mut Chained,
    tenant: &TenantId,
    recorded_by: &str,
    recorded_at: time::OffsetDateTime,
    events: Vec<(NewEvent, Sealing)>,
) -> Linked {
    let mut tiles = Vec::new();
    let events = events
        .into_iter()
        .map(|(new, sealing)| {
            let seq = Seq(head.seq.0 + 1);
            let mut event = Event {
                id: EventId::new(),
                seq,
                tenant: tenant.clone(),
                occurred_at: new.occurred_at.unwrap_or(recorded_at),
                recorded_at,
                recorded_by: recorded_by.to_owned(),
                event_data_hash: None,
                redacted_at: None,
                event_type: new.event_type,
                user_identity: Some(new.user_identity),
                action: new.action,
                entity: new.entity,
                entity_id: new.entity_id,
                property: new.property,
                source: new.source,
                ip: new.ip,
                outcome: new.outcome,
                event_data: new.event_data,
                idempotency_key: new.idempotency_key,
                amends: new.amends,
                amends_hash: new.amends_hash,
                request_hash: sealing.request_hash,
                salt_secret: Some(sealing.salt_secret),
                erased: None,
                leaf_version: LEAF_VERSION,
                leaf_hash: Digest::ZERO,
                prev_hash: head.hash,
                hash: Digest::ZERO,
            };
            debug_assert_eq!(
                commitments(&event).ok(),
                Some(sealing.commitments),
                "a sealing made for another event"
            );
            event.leaf_hash = leaf_hash_v2(&event, sealing.commitments);
            event.hash = chain_hash(&head.hash, &event.leaf_hash);
            tiles.extend(head.frontier.push(event.leaf_hash));
            head.seq = seq;
            head.hash = event.hash;
            head.recorded_at = Some(recorded_at);
            event
        })
        .collect();
    Linked { events, tiles }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limits, RawEvent};

    fn new_event(n: i64) -> NewEvent {
        let raw: RawEvent = serde_json::from_value(serde_json::json!({
            "event_type": "account.created", "user_identity": "u", "event_data": {"n": n}
        }))
        .unwrap();
        NewEvent::parse(raw, &Limits::default()).unwrap()
    }

    fn chain(n: i64) -> Vec<Event> {
        let events = (0..n)
            .map(|i| {
                let event = new_event(i);
                let sealing = super::super::commitment::seal(&event);
                (event, sealing)
            })
            .collect();
        let now = crate::model::event::truncate_to_micros(time::OffsetDateTime::now_utc());
        let mut head = Chained::genesis();
        chain_events(&mut head, &TenantId::default(), "admin", now, events).events
    }

    /// A version 1 event as the service recorded it before version 2.
    fn version_1(mut event: Event) -> Event {
        event.leaf_version = 1;
        event.salt_secret = None;
        event.event_data_hash = event.event_data.as_ref().map(event_data_hash);
        event.leaf_hash = leaf_hash(&event).unwrap();
        event
    }

    #[test]
    fn chain_links_each_event_to_the_previous() {
        let events = chain(3);
        assert_eq!(events[0].prev_hash, Digest::ZERO);
        assert_eq!(events[0].seq, Seq(1));
        for pair in events.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].seq.0, pair[0].seq.0 + 1);
        }
        for event in &events {
            assert_eq!(event.leaf_version, LEAF_VERSION);
            assert_eq!(event.leaf_hash, leaf_hash(event).unwrap());
            assert_eq!(event.hash, chain_hash(&event.prev_hash, &event.leaf_hash));
        }
    }

    #[test]
    fn the_leaf_encoding_is_rfc_8785_in_both_versions() {
        let mut event = chain(1).remove(0);
        event.action = Some(crate::model::Action::Update);
        event.entity = Some("é \"quoted\" \\ / \u{1F600}".into());
        event.entity_id = Some("42".into());
        event.property = Some("p".into());
        event.source = Some("s".into());
        event.ip = Some("::1".into());
        event.outcome = Some(crate::model::Outcome::Success);
        event.idempotency_key = Some("k".into());
        event.amends = Some(EventId::new());
        event.amends_hash = Some(Digest([3; 32]));
        for event in [event.clone(), version_1(event)] {
            let bytes = leaf_bytes(&event).unwrap();
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(bytes, serde_jcs::to_vec(&value).unwrap());
        }
    }

    /// The leaves keep their explicit structs, so that their encoding cannot move with the
    /// declaration; this holds them together. A field declared later must be either added to
    /// the leaf (with a new `LEAF_VERSION`) or declared `NotInLeaf`. Version 2 holds the
    /// `Personal` fields as commitments, the payload's in place of `event_data_hash`.
    #[test]
    fn the_leaf_holds_exactly_the_fields_declared_leaf() {
        use crate::model::FIELDS;
        use crate::model::fields::Flag;

        for field in FIELDS {
            assert!(
                field.is(Flag::Leaf) != field.is(Flag::NotInLeaf),
                "{} must be declared either Leaf or NotInLeaf",
                field.name
            );
        }
        let keys = |event: &Event| {
            let leaf: Map<String, Value> =
                serde_json::from_slice(&leaf_bytes(event).unwrap()).unwrap();
            let mut keys: Vec<String> = leaf.keys().filter(|k| *k != "v").cloned().collect();
            keys.sort_unstable();
            keys
        };
        let declared = |keep: &dyn Fn(&crate::model::fields::StoredField) -> bool| {
            let mut names: Vec<String> = FIELDS
                .iter()
                .filter(|field| keep(field))
                .map(|field| field.name.to_owned())
                .collect();
            names.sort_unstable();
            names
        };
        let event = chain(1).remove(0);
        assert_eq!(
            keys(&version_1(event.clone())),
            declared(&|field| field.is(Flag::Leaf))
        );
        assert_eq!(
            keys(&event),
            declared(
                &|field| (field.is(Flag::Leaf) && field.name != "event_data_hash")
                    || field.is(Flag::Personal)
            )
        );
        let personal: Vec<&str> = crate::model::Personal::ALL
            .iter()
            .map(|p| p.name())
            .collect();
        let flagged: Vec<String> = declared(&|field| field.is(Flag::Personal));
        assert_eq!(
            personal, flagged,
            "model::Personal names the Personal fields"
        );
    }

    #[test]
    fn any_recorded_field_change_changes_the_leaf() {
        let event = chain(1).remove(0);
        for event in [event.clone(), version_1(event)] {
            let original = leaf_hash(&event).unwrap();
            let mut changed = event.clone();
            changed.user_identity.as_mut().unwrap().push('x');
            assert_ne!(leaf_hash(&changed).unwrap(), original);
            let mut changed = event.clone();
            changed
                .event_data
                .as_mut()
                .unwrap()
                .insert("n".into(), 99.into());
            if event.leaf_version == 1 {
                changed.event_data_hash =
                    Some(event_data_hash(changed.event_data.as_ref().unwrap()));
            }
            assert_ne!(leaf_hash(&changed).unwrap(), original);
            let mut changed = event;
            changed.seq = Seq(2);
            assert_ne!(leaf_hash(&changed).unwrap(), original);
        }
    }

    #[test]
    fn an_erasure_keeps_the_leaf_and_leaves_nothing_to_confirm_a_guess_with() {
        use crate::integrity::commitment::{canonical_value, commit, erase};
        use crate::model::Personal;

        let event = chain(1).remove(0);
        let at = event.recorded_at + time::Duration::seconds(1);
        let payload_only = erase(&event, &[Personal::EventData], at).unwrap().unwrap();
        assert_eq!(payload_only.event_data, None);
        assert_eq!(payload_only.user_identity.as_deref(), Some("u"));
        assert_eq!(payload_only.salt_secret, None);
        assert_eq!(leaf_hash(&payload_only).unwrap(), event.leaf_hash);
        // The user identity still verifies against its salt; a changed one does not.
        let mut forged = payload_only.clone();
        forged.user_identity = Some("v".into());
        assert_ne!(leaf_hash(&forged).unwrap(), event.leaf_hash);

        let all = erase(&payload_only, &Personal::ALL, at).unwrap().unwrap();
        assert_eq!(all.user_identity, None);
        assert_eq!(leaf_hash(&all).unwrap(), event.leaf_hash);
        let erased = all.erased.as_ref().unwrap();
        assert!(
            erased.salts.is_empty(),
            "no salt is left to test a guess with"
        );
        let guess = canonical_value(&event, Personal::UserIdentity).unwrap();
        let committed = erased.commitment(Personal::UserIdentity).unwrap();
        assert_ne!(commit(&crate::model::Digest::ZERO, &guess), committed);
        assert!(
            erase(&all, &Personal::ALL, at).unwrap().is_none(),
            "nothing left"
        );

        // Version 1 can lose its payload alone.
        let old = version_1(chain(1).remove(0));
        let erased_old = erase(&old, &Personal::ALL, at).unwrap().unwrap();
        assert_eq!(erased_old.event_data, None);
        assert_eq!(erased_old.user_identity, old.user_identity);
        assert_eq!(leaf_hash(&erased_old).unwrap(), old.leaf_hash);
    }
}
