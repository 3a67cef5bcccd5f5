//! The backend-independent half of an append: given the chain heads and the events already
//! recorded under the batch's idempotency keys, decide what each submission becomes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use super::Appended;
use crate::integrity::commitment::{self, CommitmentError};
use crate::integrity::erasure_record::{ranges, record_payload};
use crate::integrity::tiles::FullTile;
use crate::integrity::{Chained, chain_events, same_request};
use crate::model::{
    ErasureTargets, Event, Field, Filter, Personal, Seq, Submission, TenantId, canonical,
};

pub type KeyIndex = HashMap<(TenantId, String), Event>;

/// The events each erasure in a batch applies to, as stored before the batch: read by the
/// store in the append's transaction, under the chain heads' lock.
pub type Targets = HashMap<(TenantId, ErasureTargets), Vec<Event>>;

/// How a store finds an erasure's targets: the events an equality filter matches, or a `seq`
/// range (both ends included).
pub enum TargetLookup {
    Filter(Filter),
    Range(Seq, Seq),
}

impl TargetLookup {
    pub fn of(targets: &ErasureTargets) -> Self {
        match targets {
            ErasureTargets::Event(id) => Self::Filter(Filter::Equals(Field::Id, id.to_string())),
            ErasureTargets::Subject(Personal::EntityId, value) => {
                Self::Filter(Filter::Equals(Field::EntityId, value.clone()))
            }
            ErasureTargets::Subject(_, value) => {
                Self::Filter(Filter::Equals(Field::UserIdentity, value.clone()))
            }
            ErasureTargets::Range(first, last) => Self::Range(*first, *last),
        }
    }
}

/// Every (tenant, targets) the batch's erasures name.
pub fn erasure_targets(batch: &[Submission]) -> Vec<(TenantId, ErasureTargets)> {
    let mut targets: Vec<(TenantId, ErasureTargets)> = Vec::new();
    for submission in batch {
        for event in &submission.events {
            if let Some(erasure) = &event.erases {
                let named = (submission.tenant.clone(), erasure.targets.clone());
                if !targets.contains(&named) {
                    targets.push(named);
                }
            }
        }
    }
    targets
}

/// The tenants a batch touches, sorted so that locks are always taken in the same order.
pub fn tenants(batch: &[Submission]) -> Vec<TenantId> {
    let set: BTreeSet<&str> = batch.iter().map(|s| s.tenant.as_str()).collect();
    set.into_iter().map(TenantId::new).collect()
}

/// Every (tenant, idempotency key) the batch mentions.
pub fn idempotency_keys(batch: &[Submission]) -> Vec<(TenantId, String)> {
    let mut keys: Vec<(TenantId, String)> = batch
        .iter()
        .flat_map(|s| {
            s.events
                .iter()
                .filter_map(|e| e.idempotency_key.clone().map(|k| (s.tenant.clone(), k)))
        })
        .collect();
    keys.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    keys.dedup();
    keys
}

/// How often, at most, the clock being behind a log is logged while it lasts.
const CLOCK_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Picks each batch's commit time so that `recorded_at` never decreases within a tenant's log.
/// One per store, shared by its clones; it only remembers when it last warned.
#[derive(Debug, Default)]
pub struct CommitClock {
    last_warning: Mutex<Option<Instant>>,
}

impl CommitClock {
    /// `clock` (UTC, microseconds), unless a tenant the batch appends to already has a later
    /// `recorded_at` (the clock was stepped back, or another instance's runs ahead): then that
    /// latest one, so the whole batch keeps one commit time. `heads` must have been read under
    /// the transaction's lock on them, so no append can slip in between.
    pub fn commit_time(
        &self,
        clock: OffsetDateTime,
        heads: &HashMap<TenantId, Chained>,
    ) -> OffsetDateTime {
        let latest = heads
            .iter()
            .filter_map(|(tenant, head)| Some((tenant, head.recorded_at?)))
            .max_by_key(|(_, at)| *at);
        let Some((tenant, latest)) = latest.filter(|(_, at)| *at > clock) else {
            return clock;
        };
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= CLOCK_WARNING_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                tenant = %tenant,
                behind_secs = %format_args!("{:.6}", (latest - clock).as_seconds_f64()),
                "the clock is behind the log's last recorded_at; recording at that time instead \
                 until the clock catches up"
            );
        }
        latest
    }
}

/// What to write: rows (in `seq` order per tenant), filled hash tiles, stored events to erase
/// (each as it was and as it is to be), the new heads; and one outcome per submission.
#[derive(Default)]
pub struct Assembled {
    pub rows: Vec<Event>,
    pub tiles: Vec<(TenantId, FullTile)>,
    pub erasures: Vec<(Event, Event)>,
    pub outcomes: Vec<Appended>,
    pub heads: HashMap<TenantId, Chained>,
}

/// Decides the batch. `Err` only when a stored event to erase is inconsistent (its salts do not
/// fit its fields): the database was altered.
pub fn assemble(
    batch: Vec<Submission>,
    mut known: KeyIndex,
    targets: &Targets,
    mut heads: HashMap<TenantId, Chained>,
    recorded_at: OffsetDateTime,
) -> Result<Assembled, CommitmentError> {
    let mut done = Assembled::default();
    for submission in batch {
        let outcome = assemble_one(
            submission,
            &mut known,
            targets,
            &mut heads,
            recorded_at,
            &mut done,
        )?;
        done.outcomes.push(outcome);
    }
    done.heads = heads;
    Ok(done)
}

/// Erases the fields `erasure` names from its targets (as an earlier erasure of the same batch
/// left them), adding the changes to `done`, and returns the record's payload; `None` when no
/// target had anything left to erase.
fn erase_targets(
    tenant: &TenantId,
    erasure: &crate::model::Erasure,
    targets: &Targets,
    recorded_at: OffsetDateTime,
    done: &mut Assembled,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, CommitmentError> {
    let stored = targets
        .get(&(tenant.clone(), erasure.targets.clone()))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut erased_seqs = Vec::new();
    // The service's own records are kept whole: an erasure record's payload is what accounts
    // for the fields it erased (a subject named like the admin who erased must not erase it).
    let stored = stored.iter().filter(|target| !target.is_service_record());
    for target in stored {
        let current = done
            .erasures
            .iter()
            .rev()
            .find(|(before, _)| before.tenant == target.tenant && before.seq == target.seq)
            .map_or(target, |(_, after)| after);
        if let Some(after) = commitment::erase(current, &erasure.fields, recorded_at)? {
            erased_seqs.push(after.seq);
            done.erasures.push((current.clone(), after));
        }
    }
    if erased_seqs.is_empty() {
        return Ok(None);
    }
    Ok(Some(record_payload(
        &ranges(erased_seqs),
        &erasure.fields,
        &erasure.reason,
    )))
}

fn assemble_one(
    mut submission: Submission,
    known: &mut KeyIndex,
    targets: &Targets,
    heads: &mut HashMap<TenantId, Chained>,
    recorded_at: OffsetDateTime,
    done: &mut Assembled,
) -> Result<Appended, CommitmentError> {
    // Decide every event first, so a conflict anywhere leaves the whole submission unrecorded.
    let mut slots: Vec<Option<Event>> = Vec::with_capacity(submission.events.len());
    let mut fresh = Vec::new();
    let sealed = submission.sealings.len() == submission.events.len();
    let mut sealings = std::mem::take(&mut submission.sealings).into_iter();
    for event in std::mem::take(&mut submission.events) {
        let sealing = sealings
            .next()
            .filter(|_| sealed)
            .unwrap_or_else(|| commitment::seal(&event));
        let replay = event
            .idempotency_key
            .as_ref()
            .and_then(|key| known.get(&(submission.tenant.clone(), key.clone())));
        match replay {
            // The caller is part of what is compared: another caller replaying a body under
            // its key is refused, so that nobody gets someone else's event or can claim a key
            // before its rightful caller.
            Some(previous)
                if previous.recorded_by == submission.recorded_by
                    && same_request(previous, &sealing.fingerprint) =>
            {
                slots.push(Some(previous.clone()))
            }
            Some(previous) => {
                let key = previous.idempotency_key.clone().unwrap_or_default();
                return Ok(Appended::KeyConflict(key));
            }
            None => {
                slots.push(None);
                fresh.push((event, sealing));
            }
        }
    }
    if fresh.is_empty() {
        return Ok(Appended::Replayed(slots.into_iter().flatten().collect()));
    }
    let tenant = &submission.tenant;
    let erasures_before = done.erasures.len();
    for (event, sealing) in &mut fresh {
        if let Some(erasure) = &event.erases {
            match erase_targets(tenant, erasure, targets, recorded_at, done)? {
                Some(payload) => {
                    event.event_data = Some(payload);
                    let data = event.event_data.as_ref().map(canonical::object_bytes);
                    sealing.commitments = commitment::commit_new(event, &sealing.salt_secret, data);
                }
                // A record naming nothing would only say that a race was lost.
                None => {
                    done.erasures.truncate(erasures_before);
                    return Ok(Appended::NothingErased);
                }
            }
        }
    }
    let head = heads.entry(tenant.clone()).or_insert_with(Chained::genesis);
    let first_new = head.seq;
    let linked = chain_events(head, tenant, &submission.recorded_by, recorded_at, fresh);
    done.tiles
        .extend(linked.tiles.into_iter().map(|tile| (tenant.clone(), tile)));
    let replayed: Vec<bool> = slots.iter().map(Option::is_some).collect();
    let mut created = linked.events.into_iter();
    let events: Vec<Event> = slots
        .into_iter()
        .map(|slot| slot.or_else(|| created.next()))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    for event in events.iter().filter(|e| e.seq > first_new) {
        if let Some(key) = &event.idempotency_key {
            known.insert((event.tenant.clone(), key.clone()), event.clone());
        }
        done.rows.push(event.clone());
    }
    Ok(Appended::Created { events, replayed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::Digest;
    use crate::model::{Limits, NewEvent, RawEvent, Seq};

    fn submission(events: serde_json::Value) -> Submission {
        let raws: Vec<RawEvent> = serde_json::from_value(events).unwrap();
        Submission::new(
            TenantId::default(),
            "writer",
            raws.into_iter()
                .map(|r| NewEvent::parse(r, &Limits::default()).unwrap())
                .collect(),
        )
    }

    fn now() -> OffsetDateTime {
        crate::model::event::truncate_to_micros(OffsetDateTime::now_utc())
    }

    #[test]
    fn a_key_seen_earlier_in_the_batch_replays_and_a_changed_body_conflicts() {
        let first = submission(
            serde_json::json!([{"event_type":"a","user_identity":"u","idempotency_key":"k"}]),
        );
        let same = first.clone();
        let changed = submission(
            serde_json::json!([{"event_type":"b","user_identity":"u","idempotency_key":"k"}]),
        );
        let done = assemble(
            vec![first, same, changed],
            KeyIndex::new(),
            &Targets::new(),
            HashMap::new(),
            now(),
        )
        .unwrap();
        assert_eq!(done.rows.len(), 1);
        let Appended::Created {
            events: created, ..
        } = &done.outcomes[0]
        else {
            panic!()
        };
        assert_eq!(done.outcomes[1], Appended::Replayed(created.clone()));
        assert_eq!(done.outcomes[2], Appended::KeyConflict("k".into()));
    }

    #[test]
    fn a_sealed_submission_records_what_the_writer_would_and_replays_unsealed() {
        let body = serde_json::json!([{
            "event_type": "a", "user_identity": "u", "entity_id": "e", "ip": "10.0.0.1",
            "property": "p", "idempotency_key": "k", "event_data": {"x": 1.5, "y": [1, "z"]}
        }]);
        let mut sealed = submission(body.clone());
        commitment::seal_submission(&mut sealed);
        let unsealed = submission(body);
        let done = assemble(
            vec![sealed.clone(), unsealed],
            KeyIndex::new(),
            &Targets::new(),
            HashMap::new(),
            now(),
        )
        .unwrap();
        let event = &done.rows[0];
        let sealing = &sealed.sealings[0];
        // What verification recomputes from the stored fields is what the sealing gave.
        assert_eq!(event.leaf_hash, crate::integrity::leaf_hash(event).unwrap());
        assert_eq!(event.salt_secret, Some(sealing.salt_secret));
        assert_eq!(commitment::commitments(event).unwrap(), sealing.commitments);
        assert!(same_request(event, &sealed.events[0].fingerprint()));
        assert_eq!(done.rows.len(), 1);
        assert_eq!(done.outcomes[1], Appended::Replayed(vec![event.clone()]));
    }

    #[test]
    fn a_conflicting_submission_records_none_of_its_events() {
        let first = submission(
            serde_json::json!([{"event_type":"a","user_identity":"u","idempotency_key":"k"}]),
        );
        let mixed = submission(serde_json::json!([
            {"event_type":"new","user_identity":"u"},
            {"event_type":"other","user_identity":"u","idempotency_key":"k"}
        ]));
        let done = assemble(
            vec![first, mixed],
            KeyIndex::new(),
            &Targets::new(),
            HashMap::new(),
            now(),
        )
        .unwrap();
        assert_eq!(done.rows.len(), 1);
        assert_eq!(done.heads[&TenantId::default()].seq, Seq(1));
    }

    #[test]
    fn seqs_continue_from_the_head_across_submissions() {
        let a = submission(
            serde_json::json!([{"event_type":"a","user_identity":"u"},{"event_type":"b","user_identity":"u"}]),
        );
        let b = submission(serde_json::json!([{"event_type":"c","user_identity":"u"}]));
        let mut frontier = crate::integrity::Frontier::default();
        for _ in 0..41 {
            frontier.push(Digest([1; 32]));
        }
        let head = Chained {
            seq: Seq(41),
            hash: Digest([7; 32]),
            frontier,
            recorded_at: None,
            recorded_at_ordered_from: Seq(1),
        };
        let heads = HashMap::from([(TenantId::default(), head.clone())]);
        let done = assemble(vec![a, b], KeyIndex::new(), &Targets::new(), heads, now()).unwrap();
        let seqs: Vec<i64> = done.rows.iter().map(|e| e.seq.0).collect();
        assert_eq!(seqs, vec![42, 43, 44]);
        assert_eq!(done.rows[0].prev_hash, head.hash);
        assert_eq!(done.rows[2].prev_hash, done.rows[1].hash);
        assert_eq!(done.heads[&TenantId::default()].frontier.size(), 44);
        assert!(done.tiles.is_empty(), "no tile fills before leaf 256");
    }

    #[test]
    fn the_commit_time_is_never_before_a_touched_tenants_last_one() {
        let clock = CommitClock::default();
        let now = now();
        let head = |at: Option<OffsetDateTime>| Chained {
            recorded_at: at,
            ..Chained::genesis()
        };
        let early = now - time::Duration::hours(2);
        let late = now + time::Duration::hours(1);
        let heads = HashMap::from([
            (TenantId::new("a"), head(Some(early))),
            (TenantId::new("b"), head(None)),
        ]);
        assert_eq!(clock.commit_time(now, &heads), now);
        let heads = HashMap::from([
            (TenantId::new("a"), head(Some(early))),
            (TenantId::new("b"), head(Some(late))),
        ]);
        assert_eq!(clock.commit_time(now, &heads), late);
        assert_eq!(
            clock.commit_time(now, &heads),
            late,
            "again, without a warning"
        );
        assert_eq!(clock.commit_time(now, &HashMap::new()), now);
    }
}
