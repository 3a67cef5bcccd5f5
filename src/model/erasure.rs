//! What a version 2 event keeps to stay verifiable: the random secret its personal fields'
//! salts derive from, and, once some of those fields were erased, their commitments (and the
//! salts of the fields still present). `docs/integrity.md` ("Leaf version 2") specifies both.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::digest::Digest;

/// A personal field: one that a version 2 leaf holds as a salted commitment, and that an
/// erasure removes. Ordered by name, as the leaf's keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Personal {
    EntityId,
    EventData,
    IdempotencyKey,
    Ip,
    Property,
    UserIdentity,
}

impl Personal {
    pub const ALL: [Personal; 6] = [
        Self::EntityId,
        Self::EventData,
        Self::IdempotencyKey,
        Self::Ip,
        Self::Property,
        Self::UserIdentity,
    ];

    /// The field's name: its column, its key in the API's JSON and in the leaf, and the message
    /// its salt is derived with.
    pub fn name(self) -> &'static str {
        match self {
            Self::EntityId => "entity_id",
            Self::EventData => "event_data",
            Self::IdempotencyKey => "idempotency_key",
            Self::Ip => "ip",
            Self::Property => "property",
            Self::UserIdentity => "user_identity",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.name() == name)
    }
}

/// The 256-bit random secret of one version 2 event, shown as lowercase hex. Readers are served
/// it with the event (it is what lets them check the event's commitments); an erasure deletes
/// it, after which a guessed value can no longer be confirmed. Its `Debug` form hides it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SaltSecret(pub [u8; 32]);

impl SaltSecret {
    /// A fresh secret from the operating system's generator (through `rand`'s thread RNG).
    pub fn random() -> Self {
        Self(rand::random())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SaltSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaltSecret(…)")
    }
}

impl Serialize for SaltSecret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

/// In the OpenAPI document: 64 lowercase hex digits, as it is serialised.
impl utoipa::PartialSchema for SaltSecret {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::model::digest::hex_256_schema()
    }
}

impl utoipa::ToSchema for SaltSecret {}

impl<'de> Deserialize<'de> for SaltSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        Self::from_slice(&bytes).ok_or_else(|| serde::de::Error::custom("expected 32 bytes"))
    }
}

/// What an erasure left of a version 2 event's personal fields, keyed by field name: the
/// commitment of each erased field (which the leaf holds), and the salt of each field still
/// present (the secret they derived from is gone). Stored as a JSON object and served as such:
/// `{"commitments": {"user_identity": "<hex>", …}, "salts": {"entity_id": "<hex>", …}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Erased {
    pub commitments: BTreeMap<String, Digest>,
    pub salts: BTreeMap<String, Digest>,
}

impl Erased {
    pub fn commitment(&self, field: Personal) -> Option<Digest> {
        self.commitments.get(field.name()).copied()
    }

    pub fn salt(&self, field: Personal) -> Option<Digest> {
        self.salts.get(field.name()).copied()
    }
}

/// What appending an event erases, in the same transaction: the event is then the erasure's
/// record (`audit.redacted` or `audit.erased`), and its payload is filled in when the targets
/// are known ([`crate::integrity::erasure_record::record_payload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    pub targets: ErasureTargets,
    pub fields: Vec<Personal>,
    pub reason: String,
}

/// The events an erasure applies to, within the tenant of its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErasureTargets {
    /// One event, by id.
    Event(super::EventId),
    /// Every event whose `field` (`user_identity` or `entity_id`) is `value`: a data subject.
    Subject(Personal, String),
    /// The events with `seq` from `.0` to `.1`, both included (retention).
    Range(super::Seq, super::Seq),
}
