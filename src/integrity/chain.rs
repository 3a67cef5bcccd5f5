//! Leaf hashes and the hash chain, computed by the writer while it holds the chain head.

use serde::Serialize;
use serde_json::{Map, Value};

use super::merkle::Frontier;
use super::tiles::FullTile;
use crate::model::Digest;
use crate::model::canonical;
use crate::model::{Event, EventId, NewEvent, Seq, TenantId};

/// Version of the leaf encoding; bumped whenever the set or meaning of hashed fields changes.
const LEAF_VERSION: u32 = 1;

/// The fields that enter the leaf hash, in the form hashed (see `docs/integrity.md`).
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
    user_identity: &'a str,
    v: u32,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("formatting a UTC timestamp: {e}"))
}

/// RFC 6962 leaf hash: SHA-256(0x00 ‖ canonical leaf bytes). Uses the stored
/// `event_data_hash`, not the payload, so it is the same before and after a redaction.
pub fn leaf_hash(event: &Event) -> Digest {
    Digest::sha256(&[&[0x00], &leaf_bytes(event)])
}

/// The canonical encoding of an event's leaf.
pub fn leaf_bytes(event: &Event) -> Vec<u8> {
    let fields = LeafFields {
        v: LEAF_VERSION,
        tenant: event.tenant.as_str(),
        seq: event.seq.0,
        id: event.id.to_string(),
        event_type: &event.event_type,
        user_identity: &event.user_identity,
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
    };
    serde_json::to_vec(&fields).unwrap_or_else(|e| unreachable!("strings and integers: {e}"))
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

/// Turns accepted events into log entries following `head`: the next `seq`s, the commit time,
/// the leaf and chain hashes and the filled tiles. Advances `head` past them.
pub fn chain_events(
    head: &mut Chained,
    tenant: &TenantId,
    recorded_by: &str,
    recorded_at: time::OffsetDateTime,
    events: Vec<(NewEvent, Digest)>,
) -> Linked {
    let mut tiles = Vec::new();
    let events = events
        .into_iter()
        .map(|(new, request_hash)| {
            let seq = Seq(head.seq.0 + 1);
            let mut event = Event {
                id: EventId::new(),
                seq,
                tenant: tenant.clone(),
                occurred_at: new.occurred_at.unwrap_or(recorded_at),
                recorded_at,
                recorded_by: recorded_by.to_owned(),
                event_data_hash: new.event_data.as_ref().map(event_data_hash),
                redacted_at: None,
                event_type: new.event_type,
                user_identity: new.user_identity,
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
                request_hash,
                leaf_hash: Digest::ZERO,
                prev_hash: head.hash,
                hash: Digest::ZERO,
            };
            event.leaf_hash = leaf_hash(&event);
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
        let events = (0..n).map(|i| (new_event(i), Digest::ZERO)).collect();
        let now = crate::model::event::truncate_to_micros(time::OffsetDateTime::now_utc());
        let mut head = Chained::genesis();
        chain_events(&mut head, &TenantId::default(), "admin", now, events).events
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
            assert_eq!(event.leaf_hash, leaf_hash(event));
            assert_eq!(event.hash, chain_hash(&event.prev_hash, &event.leaf_hash));
        }
    }

    #[test]
    fn the_leaf_encoding_is_rfc_8785() {
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
        let bytes = leaf_bytes(&event);
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(bytes, serde_jcs::to_vec(&value).unwrap());
    }

    /// The leaf keeps its explicit struct, so that its encoding cannot move with the declaration;
    /// this holds the two together. A field declared later must be either added to the leaf
    /// (with a new `LEAF_VERSION`) or declared `NotInLeaf`.
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
        let declared: Vec<&str> = FIELDS
            .iter()
            .filter(|field| field.is(Flag::Leaf))
            .map(|field| field.name)
            .collect();
        let leaf: Map<String, Value> = serde_json::from_slice(&leaf_bytes(&chain(1)[0])).unwrap();
        let mut hashed: Vec<&str> = leaf
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "v")
            .collect();
        let mut expected = declared.clone();
        hashed.sort_unstable();
        expected.sort_unstable();
        assert_eq!(hashed, expected);
    }

    #[test]
    fn any_recorded_field_change_changes_the_leaf() {
        let event = chain(1).remove(0);
        let original = leaf_hash(&event);
        let mut changed = event.clone();
        changed.user_identity.push('x');
        assert_ne!(leaf_hash(&changed), original);
        let mut changed = event.clone();
        changed.event_data_hash = Some(event_data_hash(&Map::new()));
        assert_ne!(leaf_hash(&changed), original);
        let mut redacted = event.clone();
        redacted.event_data = None;
        assert_eq!(leaf_hash(&redacted), original, "redaction keeps the leaf");
        let mut changed = event;
        changed.seq = Seq(2);
        assert_ne!(leaf_hash(&changed), original);
    }
}
