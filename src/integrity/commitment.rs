//! Salted commitments to an event's personal fields, as a version 2 leaf holds them, and the
//! erasure that removes the fields while keeping their commitments (`docs/integrity.md`,
//! "Leaf version 2"):
//!
//! ```text
//! salt(f)       = HMAC-SHA256(key = salt_secret, message = f's name in UTF-8)
//! commitment(f) = SHA-256( salt(f) ‖ JCS(value of f) )      null when the event has no value for f
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::chain::salted_fingerprint;
use crate::model::canonical;
use crate::model::{Digest, Event, NewEvent, Personal, SaltSecret, Sealing, Submission};

/// Why a version 2 event's commitments cannot be computed: its stored form is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CommitmentError(pub String);

/// The salt of one field: HMAC-SHA256 keyed with the event's secret, over the field's name.
pub fn salt(secret: &SaltSecret, field: Personal) -> Digest {
    salt_from(&keyed(secret), field)
}

/// HMAC-SHA256 keyed with the secret, ready for any field: keying costs two SHA-256 blocks,
/// done once per event rather than once per field.
fn keyed(secret: &SaltSecret) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"))
}

fn salt_from(keyed: &Hmac<Sha256>, field: Personal) -> Digest {
    let mut mac = keyed.clone();
    mac.update(field.name().as_bytes());
    Digest(mac.finalize().into_bytes().into())
}

/// SHA-256 of the salt followed by the value's canonical (RFC 8785) bytes.
pub fn commit(salt: &Digest, canonical_value: &[u8]) -> Digest {
    Digest::sha256(&[salt.as_bytes(), canonical_value])
}

/// The field's value as committed to: its RFC 8785 form (a JSON string, or the payload
/// object), or `None` when the event has no value for it.
pub fn canonical_value(event: &Event, field: Personal) -> Option<Vec<u8>> {
    let text = match field {
        Personal::EventData => return event.event_data.as_ref().map(canonical::object_bytes),
        Personal::EntityId => event.entity_id.as_deref(),
        Personal::IdempotencyKey => event.idempotency_key.as_deref(),
        Personal::Ip => event.ip.as_deref(),
        Personal::Property => event.property.as_deref(),
        Personal::UserIdentity => event.user_identity.as_deref(),
    };
    text.map(canonical::string_bytes)
}

/// A new event's sealing, with a fresh salt secret: its fingerprint, and its commitments as
/// `commitments` will compute them for the recorded event.
pub fn seal(event: &NewEvent) -> Sealing {
    let data = event.event_data.as_ref().map(canonical::object_bytes);
    let fingerprint = event.fingerprint_with(data.as_deref());
    let salt_secret = SaltSecret::random();
    Sealing {
        fingerprint,
        request_hash: salted_fingerprint(&salt_secret, &fingerprint),
        commitments: commit_new(event, &salt_secret, data),
        salt_secret,
    }
}

/// Seals every event of the submission (see [`Sealing`]), replacing any sealings it had.
pub fn seal_submission(submission: &mut Submission) {
    submission.sealings = submission.events.iter().map(seal).collect();
}

/// The commitments of a new event's personal fields under `secret`, in [`Personal::ALL`]
/// order; `canonical_data` is its payload's canonical bytes.
pub fn commit_new(
    event: &NewEvent,
    secret: &SaltSecret,
    canonical_data: Option<Vec<u8>>,
) -> [Option<Digest>; 6] {
    let keyed = keyed(secret);
    let mut canonical_data = canonical_data;
    Personal::ALL.map(|field| {
        let value = match field {
            Personal::EventData => canonical_data.take(),
            Personal::EntityId => event.entity_id.as_deref().map(canonical::string_bytes),
            Personal::IdempotencyKey => event
                .idempotency_key
                .as_deref()
                .map(canonical::string_bytes),
            Personal::Ip => event.ip.as_deref().map(canonical::string_bytes),
            Personal::Property => event.property.as_deref().map(canonical::string_bytes),
            Personal::UserIdentity => Some(canonical::string_bytes(&event.user_identity)),
        };
        value.map(|value| commit(&salt_from(&keyed, field), &value))
    })
}

/// Removes the field's value from the event.
fn clear(event: &mut Event, field: Personal) {
    match field {
        Personal::EventData => event.event_data = None,
        Personal::EntityId => event.entity_id = None,
        Personal::IdempotencyKey => event.idempotency_key = None,
        Personal::Ip => event.ip = None,
        Personal::Property => event.property = None,
        Personal::UserIdentity => event.user_identity = None,
    }
}

/// The salt a present value of a version 2 event is committed with: derived from the secret
/// (`keyed` with it), or kept in `erased` once the secret is gone.
fn salt_of(
    event: &Event,
    keyed: Option<&Hmac<Sha256>>,
    field: Personal,
) -> Result<Digest, CommitmentError> {
    if let Some(keyed) = keyed {
        return Ok(salt_from(keyed, field));
    }
    event
        .erased
        .as_ref()
        .and_then(|erased| erased.salt(field))
        .ok_or_else(|| {
            CommitmentError(format!(
                "{} has a value but neither a salt secret nor a salt",
                field.name()
            ))
        })
}

/// The commitments of a version 2 event's personal fields, in [`Personal::ALL`] order: from
/// the values present, and from `erased` for the fields an erasure removed.
pub fn commitments(event: &Event) -> Result<[Option<Digest>; 6], CommitmentError> {
    let keyed = event.salt_secret.as_ref().map(keyed);
    let mut out = [None; 6];
    for (slot, field) in out.iter_mut().zip(Personal::ALL) {
        let kept = event.erased.as_ref().and_then(|e| e.commitment(field));
        *slot = match (canonical_value(event, field), kept) {
            (Some(_), Some(_)) => {
                return Err(CommitmentError(format!(
                    "{} is marked erased but has a value",
                    field.name()
                )));
            }
            (Some(value), None) => Some(commit(&salt_of(event, keyed.as_ref(), field)?, &value)),
            (None, kept) => kept,
        };
    }
    Ok(out)
}

/// The event with `fields` erased at `at`, or `None` if it holds none of them. Version 2: each
/// erased field's commitment is kept in `erased`, the secret is deleted, and the fields still
/// present keep their salts, so the leaf is unchanged. Version 1 commits to the payload alone
/// (through `event_data_hash`), so only the payload can go: the other fields are left as they
/// are ([`erasable`] says which).
pub fn erase(
    event: &Event,
    fields: &[Personal],
    at: time::OffsetDateTime,
) -> Result<Option<Event>, CommitmentError> {
    let fields: Vec<Personal> = fields
        .iter()
        .copied()
        .filter(|field| erasable(event, *field))
        .collect();
    if fields.is_empty() {
        return Ok(None);
    }
    let mut erased_event = event.clone();
    erased_event.redacted_at = Some(at);
    if event.leaf_version == 1 {
        erased_event.event_data = None;
        return Ok(Some(erased_event));
    }
    let current = commitments(event)?;
    let keyed = event.salt_secret.as_ref().map(keyed);
    let mut erased = event.erased.clone().unwrap_or_default();
    for (field, commitment) in Personal::ALL.into_iter().zip(current) {
        if fields.contains(&field) {
            clear(&mut erased_event, field);
            erased.salts.remove(field.name());
            if let Some(commitment) = commitment {
                erased
                    .commitments
                    .insert(field.name().to_owned(), commitment);
            }
        } else if canonical_value(event, field).is_some() {
            erased.salts.insert(
                field.name().to_owned(),
                salt_of(event, keyed.as_ref(), field)?,
            );
        }
    }
    erased_event.salt_secret = None;
    erased_event.erased = Some(erased);
    Ok(Some(erased_event))
}

/// Whether an erasure of `field` would remove something: the event has a value for it, and its
/// leaf version can do without it (version 1 only without the payload).
pub fn erasable(event: &Event, field: Personal) -> bool {
    canonical_value(event, field).is_some()
        && (event.leaf_version != 1 || field == Personal::EventData)
}

/// Whether the event holds no personal value an erasure could still remove.
pub fn fully_erased(event: &Event) -> bool {
    Personal::ALL
        .into_iter()
        .all(|field| !erasable(event, field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Erased;

    #[test]
    fn the_salt_is_hmac_sha256_of_the_field_name() {
        // Python's `hmac.new(bytes(range(32)), b"ip", "sha256").hexdigest()`.
        let secret = SaltSecret(std::array::from_fn(|i| i as u8));
        assert_eq!(
            salt(&secret, Personal::Ip).to_hex(),
            "f6e8b3d2b94ef7e345ffd663684a4646add707069412a6b27e7ce126a7c12bb8"
        );
    }

    #[test]
    fn erased_keeps_commitments_and_salts_as_a_json_object() {
        let mut erased = Erased::default();
        erased
            .commitments
            .insert("user_identity".into(), Digest([1; 32]));
        erased.salts.insert("ip".into(), Digest([2; 32]));
        let json = serde_json::to_value(&erased).unwrap();
        assert_eq!(json["commitments"]["user_identity"], "01".repeat(32));
        assert_eq!(serde_json::from_value::<Erased>(json).unwrap(), erased);
    }
}
