//! Verification of a whole log, streamed in `seq` order with constant memory: every payload
//! hash, leaf, chain link and signed checkpoint is recomputed, and the first problem reported
//! with the `seq` where it shows. The same checker reads the database or an NDJSON export.

use std::collections::{HashMap, VecDeque};

use super::chain::{chain_hash, event_data_hash, leaf_hash};
use super::checkpoint::{Checkpoint, NoteVerifier, parse_checkpoint_text, predecessor_line};
use super::dropped::{DROP_EVENT_TYPE, DroppedPrefix, ExportedPrefix, parse_record, stored_leaves};
use super::erasure_record::{
    ErasureRecords, Unaccounted, erased_ranges, field_bits, field_names, record_fields,
};
use super::merkle::Frontier;
use super::tiles::{FullTile, TILE_WIDTH, Tile, TileKind};
use crate::model::Digest;
use crate::model::{Event, EventId, Personal, Seq, TenantId};

/// The redaction event type: an erasure of one event's payload. Before the erasure records
/// named `seq` ranges, it named its one target by `amends` and `amends_hash` only.
pub const REDACTION_EVENT_TYPE: &str = "audit.redacted";

/// The erasure event type: an erasure of personal fields of one or more events.
pub const ERASURE_EVENT_TYPE: &str = "audit.erased";

/// What is wrong, and where it first shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant}: {}{message}", .seq.map(|s| format!("seq {s}: ")).unwrap_or_default())]
pub struct Problem {
    pub tenant: TenantId,
    pub seq: Option<i64>,
    pub message: String,
}

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub tenant: TenantId,
    pub events: u64,
    pub checkpoints: u64,
    pub root: Digest,
}

/// Checks one tenant's events, fed in `seq` order.
pub struct TenantVerifier {
    tenant: TenantId,
    keys: Vec<NoteVerifier>,
    last: Option<(Seq, Digest)>,
    frontier: Frontier,
    /// Tiles the recomputed tree filled since last taken, when the stored ones are to be
    /// compared with them ([`TenantVerifier::collect_tiles`]).
    filled: Option<Vec<FullTile>>,
    /// Checkpoints still to reach, smallest first.
    checkpoints: VecDeque<Checkpoint>,
    checked: u64,
    /// The previous event's `recorded_at`: the next may equal it, never precede it.
    last_recorded_at: Option<time::OffsetDateTime>,
    /// The first `seq` whose `recorded_at` is checked against the previous one's.
    recorded_at_ordered_from: Seq,
    /// The last checkpoint checked (size and root), which the next one must name as its
    /// predecessor once checkpoints name theirs.
    last_checkpoint: Option<(u64, Digest)>,
    /// Whether a checkpoint naming its predecessor was checked: from then on every one must.
    checkpoints_chained: bool,
    /// Erased rows not yet matched by the record of their erasure.
    erasures: ErasureRecords,
    /// Erased version 1 rows, which a record written before records named `seq` ranges names
    /// by id and chain hash: seq, chain hash, erasure time.
    erased_by_id: HashMap<EventId, (Seq, Digest, time::OffsetDateTime)>,
    /// The prefix whose rows were dropped with their partition, and whether its record was
    /// read.
    dropped: Option<(DroppedPrefix, bool)>,
}

impl TenantVerifier {
    /// `checkpoints` are the tree heads to check on the way (stored ones and any the auditor
    /// kept); each must carry a signature by one of `keys`.
    pub fn new(
        tenant: TenantId,
        keys: Vec<NoteVerifier>,
        mut checkpoints: Vec<Checkpoint>,
    ) -> Self {
        checkpoints.sort_by_key(|c| c.tree_size);
        Self {
            tenant,
            keys,
            last: None,
            frontier: Frontier::default(),
            filled: None,
            checkpoints: checkpoints.into(),
            checked: 0,
            last_recorded_at: None,
            recorded_at_ordered_from: Seq(1),
            last_checkpoint: None,
            checkpoints_chained: false,
            erasures: ErasureRecords::default(),
            erased_by_id: HashMap::new(),
            dropped: None,
        }
    }

    /// Checks the order of `recorded_at` only from `seq` on: a log that existed before the
    /// service kept it in order may step back earlier without anyone having touched it
    /// (`Chained::recorded_at_ordered_from`).
    pub fn recorded_at_ordered_from(mut self, seq: Seq) -> Self {
        self.recorded_at_ordered_from = seq;
        self
    }

    /// Keeps the tiles the recomputed tree fills, for [`TenantVerifier::take_tiles`].
    pub fn collect_tiles(mut self) -> Self {
        self.filled = Some(Vec::new());
        self
    }

    /// The tiles filled since the last call (none unless collecting).
    pub fn take_tiles(&mut self) -> Vec<FullTile> {
        self.filled.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// The right edge of the tree recomputed so far.
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    fn problem(&self, seq: Option<i64>, message: impl Into<String>) -> Problem {
        Problem {
            tenant: self.tenant.clone(),
            seq,
            message: message.into(),
        }
    }

    /// Adds the leaf hash of a dropped event, as its level-0 tile holds it: the tree grows, and
    /// the checkpoints it reaches are checked, but there is no row to check.
    pub fn push_dropped_leaf(&mut self, leaf: Digest) -> Result<(), Problem> {
        self.frontier.push(leaf);
        self.check_reached_checkpoints()
    }

    /// Continues after the dropped prefix: the next event must be `prefix.through + 1`, linked
    /// to `prefix.chain_hash`. After [`Self::push_dropped_leaf`] of every leaf of the prefix the
    /// tree recomputed from the tiles must end in `prefix.frontier`; with none (an export, which
    /// carries no tiles) the tree resumes from `prefix.frontier`, and the checkpoints before its
    /// end are checked for their signatures and sequence only. A record of the drop must follow.
    pub fn resume_after(&mut self, prefix: DroppedPrefix) -> Result<(), Problem> {
        let at = Some(prefix.through.0);
        if self.frontier.size() == 0 {
            self.frontier = prefix.frontier.clone();
            while let Some(checkpoint) = self.checkpoints.front() {
                if checkpoint.tree_size >= self.frontier.size() {
                    break;
                }
                let checkpoint = self
                    .checkpoints
                    .pop_front()
                    .unwrap_or_else(|| unreachable!());
                self.check_checkpoint(&checkpoint, None)?;
            }
            self.check_reached_checkpoints()?;
        } else if self.frontier != prefix.frontier {
            return Err(self.problem(
                at,
                "the tree edge stored for the dropped prefix differs from the tree recomputed \
                 from its tiles",
            ));
        }
        self.last = Some((prefix.through, prefix.chain_hash));
        self.dropped = Some((prefix, false));
        Ok(())
    }

    pub fn push(&mut self, event: &Event) -> Result<(), Problem> {
        let (expected, prev) = self
            .last
            .map_or((Seq(1), Digest::ZERO), |(seq, hash)| (Seq(seq.0 + 1), hash));
        let at = Some(expected.0);
        if event.tenant != self.tenant {
            return Err(self.problem(at, format!("row belongs to tenant {}", event.tenant)));
        }
        if event.seq != expected {
            return Err(self.problem(
                at,
                format!("missing or out of order: found seq {} here", event.seq),
            ));
        }
        self.check_erasure(event)?;
        self.match_erasure_record(event)?;
        self.match_drop_record(event)?;
        let leaf = match leaf_hash(event) {
            Ok(leaf) => leaf,
            Err(error) => {
                return Err(self.problem(at, format!("the leaf cannot be built: {error}")));
            }
        };
        if leaf != event.leaf_hash {
            return Err(self.problem(at, "a recorded field was changed (leaf hash mismatch)"));
        }
        if event.prev_hash != prev {
            return Err(self.problem(at, "prev_hash does not link to the previous event"));
        }
        if event.hash != chain_hash(&prev, &leaf) {
            return Err(self.problem(at, "chain hash mismatch"));
        }
        // The service never records an event before the previous one (it holds the time back
        // when its clock is behind), so a decrease means the log was not written by it.
        if let Some(previous) = self.last_recorded_at
            && event.seq >= self.recorded_at_ordered_from
            && event.recorded_at < previous
        {
            return Err(self.problem(
                at,
                format!(
                    "recorded_at goes backwards: {} is before the previous event's {}",
                    rfc3339(event.recorded_at),
                    rfc3339(previous)
                ),
            ));
        }
        self.last_recorded_at = Some(event.recorded_at);
        let filled = self.frontier.push(leaf);
        if let Some(collected) = &mut self.filled {
            collected.extend(filled);
        }
        self.last = Some((event.seq, event.hash));
        self.check_reached_checkpoints()
    }

    /// Checks the checkpoints the tree has reached.
    fn check_reached_checkpoints(&mut self) -> Result<(), Problem> {
        while let Some(checkpoint) = self.checkpoints.front() {
            if checkpoint.tree_size > self.frontier.size() {
                break;
            }
            let checkpoint = self
                .checkpoints
                .pop_front()
                .unwrap_or_else(|| unreachable!());
            self.check_checkpoint(&checkpoint, Some(self.frontier.root()))?;
        }
        Ok(())
    }

    /// An `audit.dropped` record names the prefix dropped with it: the latest must be the one
    /// the log starts after; an earlier one a part of it. A record of events still here, or of
    /// a prefix other than the log's, means rows or the stored prefix were altered.
    fn match_drop_record(&mut self, event: &Event) -> Result<(), Problem> {
        if event.event_type != DROP_EVENT_TYPE {
            return Ok(());
        }
        let at = Some(event.seq.0);
        let Some(record) = event.event_data.as_ref().and_then(parse_record) else {
            return Err(self.problem(at, "an audit.dropped record without the drop it names"));
        };
        match &mut self.dropped {
            Some((prefix, recorded)) if record.through == prefix.through => {
                if !record.names(prefix) {
                    return Err(self.problem(
                        at,
                        "the dropped prefix differs from what the record of its drop says",
                    ));
                }
                *recorded = true;
            }
            Some((prefix, _)) if record.through < prefix.through => {}
            _ => {
                return Err(self.problem(
                    at,
                    format!(
                        "a record says events up to seq {} were dropped, but the log holds them",
                        record.through
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What is stored of an event's personal fields fits its leaf version and erasure state;
    /// an erased event is remembered until the record of its erasure is read.
    fn check_erasure(&mut self, event: &Event) -> Result<(), Problem> {
        let at = Some(event.seq.0);
        if event.leaf_version == 1 {
            match (&event.event_data, event.redacted_at) {
                (Some(data), _) if event.event_data_hash != Some(event_data_hash(data)) => {
                    return Err(self.problem(at, "event_data does not match its recorded hash"));
                }
                (None, None) if event.event_data_hash.is_some() => {
                    return Err(self.problem(at, "event_data is missing but was never redacted"));
                }
                (None, Some(when)) if event.event_data_hash.is_some() => {
                    self.erased_by_id
                        .insert(event.id, (event.seq, event.hash, when));
                    self.erasures
                        .erased(event.seq, when, field_bits([Personal::EventData]));
                }
                (None, Some(_)) => {
                    return Err(self.problem(at, "marked redacted but never had a payload"));
                }
                _ => {}
            }
            if event.salt_secret.is_some() || event.erased.is_some() {
                return Err(self.problem(at, "a version 1 event has version 2 salts"));
            }
            return Ok(());
        }
        if event.event_data_hash.is_some() {
            return Err(self.problem(at, "a version 2 event has an unsalted event_data_hash"));
        }
        match (&event.erased, event.redacted_at, &event.salt_secret) {
            (Some(erased), Some(when), None) => {
                let lost = field_bits(
                    erased
                        .commitments
                        .keys()
                        .filter_map(|name| Personal::parse(name)),
                );
                self.erasures.erased(event.seq, when, lost);
            }
            (Some(_), None, _) => {
                return Err(self.problem(at, "fields were erased but redacted_at is not set"));
            }
            (Some(_), _, Some(_)) => {
                return Err(self.problem(at, "an erased event still has its salt secret"));
            }
            (None, Some(_), _) => {
                return Err(self.problem(at, "marked erased but nothing was erased"));
            }
            (None, None, _) => {}
        }
        Ok(())
    }

    /// An erasure record accounts for the rows its commit erased: those whose `redacted_at` is
    /// its `recorded_at`, within the `seq` ranges it names (or, for a record from before such
    /// ranges, the one version 1 event it names by id and chain hash).
    ///
    /// Every event a record names must be erased: one that holds its values again was restored.
    fn match_erasure_record(&mut self, event: &Event) -> Result<(), Problem> {
        if event.event_type != REDACTION_EVENT_TYPE && event.event_type != ERASURE_EVENT_TYPE {
            return Ok(());
        }
        if let Some(ranges) = event.event_data.as_ref().and_then(erased_ranges) {
            let retained_from = self.dropped.as_ref().map_or(1, |(p, _)| p.through.0 + 1);
            for &(first, last) in &ranges {
                if let Some(seq) =
                    self.erasures
                        .first_not_erased(first.max(retained_from), last, event.seq.0)
                {
                    return Err(self.problem(
                        Some(event.seq.0),
                        format!(
                            "this erasure record names seq {seq}, which is not erased: its \
                             values were restored"
                        ),
                    ));
                }
            }
            let named = event.event_data.as_ref().map_or(0, record_fields);
            self.erasures.recorded(event.recorded_at, &ranges, named);
        } else if event.event_type == REDACTION_EVENT_TYPE
            && let Some(target) = event.amends
            && let Some((seq, hash, when)) = self.erased_by_id.get(&target).copied()
            && event.amends_hash == Some(hash)
            && event.recorded_at == when
        {
            self.erased_by_id.remove(&target);
            // A version 1 event loses its payload only, which such a record stands for.
            let payload = field_bits([Personal::EventData]);
            self.erasures.recorded(when, &[(seq.0, seq.0)], payload);
        }
        Ok(())
    }

    /// Checks a checkpoint's signature, origin and predecessor, and that the tree at its size
    /// has `root`, where that is known (it is not for a checkpoint inside the dropped prefix of
    /// an export).
    fn check_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
        root: Option<Digest>,
    ) -> Result<(), Problem> {
        let size = checkpoint.tree_size;
        let at = Some(size as i64);
        if root.is_some() && size != self.frontier.size() {
            return Err(self.problem(at, format!("checkpoint of size {size} cannot be checked")));
        }
        let opened = self.keys.iter().find_map(|key| key.open(&checkpoint.note));
        let Some(text) = opened else {
            return Err(self.problem(
                at,
                format!("checkpoint {size} is not signed by a trusted key"),
            ));
        };
        let Some((origin, signed_size, signed_root)) = parse_checkpoint_text(text) else {
            return Err(self.problem(at, format!("checkpoint {size} is not a tlog-checkpoint")));
        };
        let signer_is_origin = self
            .keys
            .iter()
            .any(|k| k.name == origin && k.open(&checkpoint.note).is_some());
        if !signer_is_origin || !origin.ends_with(&format!("/{}", self.tenant)) {
            return Err(self.problem(
                at,
                format!("checkpoint {size} names log `{origin}`, not this tenant's"),
            ));
        }
        if signed_size != size || signed_root != checkpoint.root {
            return Err(self.problem(at, format!("checkpoint {size} does not match its note")));
        }
        if root.is_some_and(|root| root != signed_root) {
            return Err(self.problem(
                at,
                format!("the log's tree at size {size} differs from the signed checkpoint"),
            ));
        }
        // The same checkpoint twice (stored, and kept by the auditor) is checked once.
        if self.last_checkpoint == Some((size, signed_root)) {
            return Ok(());
        }
        self.check_predecessor(size, text)?;
        self.last_checkpoint = Some((size, signed_root));
        self.checked += 1;
        Ok(())
    }

    /// Each checkpoint names the one signed before it: a checkpoint deleted from between two
    /// others (or from before the first one left) leaves a name without its checkpoint.
    fn check_predecessor(&mut self, size: u64, text: &str) -> Result<(), Problem> {
        let at = Some(size as i64);
        let Ok(named) = predecessor_line(text) else {
            return Err(self.problem(
                at,
                format!("checkpoint {size} has a malformed predecessor line"),
            ));
        };
        match (named, self.last_checkpoint) {
            (Some(named), last) if Some(named) == last => self.checkpoints_chained = true,
            (Some((named_size, _)), last) => {
                let found = last.map_or("none".to_owned(), |(s, _)| format!("checkpoint {s}"));
                return Err(self.problem(
                    at,
                    format!(
                        "checkpoint {size} names checkpoint {named_size} as its predecessor, \
                         but the one before it is {found}: a checkpoint was deleted or replaced"
                    ),
                ));
            }
            (None, Some((last, _))) if self.checkpoints_chained => {
                return Err(self.problem(
                    at,
                    format!("checkpoint {size} does not name its predecessor, checkpoint {last}"),
                ));
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Ends the stream. `head` is where the database says the log ends, when known.
    pub fn finish(self, head: Option<(Seq, Digest)>) -> Result<Verified, Problem> {
        let size = self.frontier.size();
        if let Some(checkpoint) = self.checkpoints.front() {
            return Err(self.problem(
                Some(size as i64 + 1),
                format!(
                    "log truncated: a signed checkpoint covers {} events, the log has {size}",
                    checkpoint.tree_size
                ),
            ));
        }
        if let Some((head_seq, head_hash)) = head
            && Some((head_seq, head_hash)) != self.last
            && !(head_seq.0 == 0 && self.last.is_none())
        {
            return Err(self.problem(
                Some(size as i64 + 1),
                format!("log truncated or rewritten: the chain head is at seq {head_seq}, the last event at {size}"),
            ));
        }
        if let Some((prefix, false)) = &self.dropped {
            return Err(self.problem(
                Some(prefix.through.0 + 1),
                format!(
                    "the log starts after seq {}, and no audit.dropped record names that prefix",
                    prefix.through
                ),
            ));
        }
        match self.erasures.first_unaccounted() {
            None => {}
            Some((seq, Unaccounted::NoRecord)) => {
                return Err(self.problem(
                    Some(seq),
                    "fields erased without an erasure event recording it",
                ));
            }
            Some((seq, Unaccounted::FieldsNotNamed(fields))) => {
                return Err(self.problem(
                    Some(seq),
                    format!(
                        "lost fields that no erasure record naming it names: {}",
                        field_names(fields).join(", ")
                    ),
                ));
            }
        }
        Ok(Verified {
            tenant: self.tenant,
            events: size,
            checkpoints: self.checked,
            root: self.frontier.root(),
        })
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.to_string())
}

/// The tenant a checkpoint's origin line names (`<log_origin>/<tenant>`).
fn names_tenant(checkpoint_note: &str, tenant: &TenantId) -> bool {
    checkpoint_note
        .split('\n')
        .next()
        .is_some_and(|origin| origin.ends_with(&format!("/{tenant}")))
}

/// A checkpoint the auditor kept: a signed note, checked against the log like stored ones.
pub fn kept_checkpoint(note: &str, tenant: TenantId) -> Option<Checkpoint> {
    let text_end = note.find("\n\n")? + 1;
    let (_, tree_size, root) = parse_checkpoint_text(&note[..text_end])?;
    Some(Checkpoint {
        tenant,
        tree_size,
        root,
        issued_at: time::OffsetDateTime::UNIX_EPOCH,
        note: note.to_owned(),
    })
}

/// The tenant a kept note names at the end of its origin line.
fn kept_tenant(note: &str) -> Option<&str> {
    note.split('\n')
        .next()
        .and_then(|origin| origin.rsplit('/').next())
}

fn for_tenant(kept: &[String], tenant: &TenantId) -> Vec<Checkpoint> {
    kept.iter()
        .filter(|note| names_tenant(note, tenant))
        .filter_map(|note| kept_checkpoint(note, tenant.clone()))
        .collect()
}

/// Verifies every tenant's log in the database. `kept` are signed notes the auditor saved
/// earlier (they catch a truncation the database itself no longer shows).
pub async fn verify_store<S: crate::store::Store>(
    store: &S,
    keys: &[NoteVerifier],
    kept: &[String],
    progress: impl FnMut(&TenantId, u64),
) -> Result<Vec<Result<Verified, Problem>>, crate::store::StoreError> {
    verify_logs(store, None, keys, kept, progress).await
}

/// [`verify_store`] of the logs of `only` those tenants (every tenant's when `None`); the
/// others are not read.
pub async fn verify_logs<S: crate::store::Store>(
    store: &S,
    only: Option<&[TenantId]>,
    keys: &[NoteVerifier],
    kept: &[String],
    mut progress: impl FnMut(&TenantId, u64),
) -> Result<Vec<Result<Verified, Problem>>, crate::store::StoreError> {
    let mut tenants = store.tenants().await?;
    // A kept checkpoint of a tenant the database no longer knows is a deleted log.
    for name in kept.iter().filter_map(|note| kept_tenant(note)) {
        if !tenants.iter().any(|t| t.as_str() == name) {
            tenants.push(TenantId::new(name));
        }
    }
    if let Some(only) = only {
        tenants.retain(|tenant| only.contains(tenant));
    }
    let mut results = Vec::new();
    for tenant in tenants {
        let mut attempts = 0;
        let result = loop {
            let dropped = store.dropped_prefix(&tenant).await?;
            let result =
                verify_tenant(store, &tenant, keys, kept, dropped.clone(), &mut progress).await?;
            // A partition dropped meanwhile takes rows from under the run: run again from the
            // new prefix rather than report them missing.
            attempts += 1;
            if result.is_ok() || attempts == 3 || store.dropped_prefix(&tenant).await? == dropped {
                break result;
            }
        };
        results.push(result);
    }
    Ok(results)
}

/// Verifies one tenant's log, from after `dropped` if its first rows were dropped.
async fn verify_tenant<S: crate::store::Store>(
    store: &S,
    tenant: &TenantId,
    keys: &[NoteVerifier],
    kept: &[String],
    dropped: Option<DroppedPrefix>,
    progress: &mut impl FnMut(&TenantId, u64),
) -> Result<Result<Verified, Problem>, crate::store::StoreError> {
    // The checkpoints first, then the head, and verify up to it: events appended meanwhile are
    // not this run's business, and must not look like a rewritten tail. In the other order a
    // checkpoint signed between the two reads would cover more than the head and look like a
    // truncation.
    let mut checkpoints = store.checkpoints(tenant).await?;
    let (chained, unreadable_head) = match store.head(tenant).await {
        Ok(chained) => (chained, None),
        // A head that does not decode (say its partial tiles no longer fit the events) is a
        // problem of this log; its events are still checked, so that a deleted or changed event
        // is named where it shows.
        Err(crate::store::StoreError::Other(error)) => (None, Some(format!("{error:#}"))),
        Err(other) => return Err(other),
    };
    let ordered_from = chained
        .as_ref()
        .map_or(Seq(1), |h| h.recorded_at_ordered_from);
    let head = chained.as_ref().map(|h| (h.seq, h.hash));
    let until = head.map(|(seq, _)| seq);
    checkpoints.extend(for_tenant(kept, tenant));
    let mut verifier = TenantVerifier::new(tenant.clone(), keys.to_vec(), checkpoints)
        .recorded_at_ordered_from(ordered_from)
        .collect_tiles();
    if let Some(prefix) = dropped
        && let Err(problem) = verify_dropped_prefix(store, &mut verifier, prefix).await?
    {
        return Ok(Err(problem));
    }
    // Each page is checked on a blocking thread while the next one is fetched: the database's
    // decoding and the hashing run side by side.
    let mut pages = crate::store::Pages::new(store.clone(), tenant.clone(), until);
    while let Some(page) = pages.next().await? {
        let last = page.last().map_or(0, |e| e.seq.0);
        let (checked, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = page.iter().try_for_each(|event| verifier.push(event));
            (verifier, outcome)
        })
        .await
        .map_err(|e| crate::store::StoreError::Other(e.into()))?;
        verifier = checked;
        if let Err(problem) = outcome {
            return Ok(Err(problem));
        }
        // Every tile the events fill must be stored as recomputed: proofs and tile reads are
        // served from the stored ones.
        let filled = verifier.take_tiles();
        if let Some(problem) = compare_tiles(store, tenant, &filled).await? {
            return Ok(Err(problem));
        }
        progress(tenant, last as u64);
    }
    let edge = verifier.frontier().clone();
    Ok(verifier.finish(head).and_then(|verified| {
        if let Some(error) = unreadable_head {
            return Err(Problem {
                tenant: tenant.clone(),
                seq: None,
                message: format!("the chain head cannot be read: {error}"),
            });
        }
        // The head's partial tiles, from which proofs and tiles are served too.
        match chained {
            Some(stored) if stored.frontier != edge => Err(Problem {
                tenant: tenant.clone(),
                seq: Some(stored.seq.0),
                message: "the chain head's partial tiles differ from the tree recomputed from \
                          the events"
                    .into(),
            }),
            _ => Ok(verified),
        }
    }))
}

/// Feeds the dropped prefix's leaf hashes from the level-0 tiles (checking the checkpoints they
/// reach), then resumes after it.
async fn verify_dropped_prefix<S: crate::store::Store>(
    store: &S,
    verifier: &mut TenantVerifier,
    prefix: DroppedPrefix,
) -> Result<Result<(), Problem>, crate::store::StoreError> {
    let through = u64::try_from(prefix.through.0).unwrap_or(0);
    let mut failed = None;
    let read = stored_leaves(store, &verifier.tenant.clone(), 0, through, |leaves| {
        for leaf in leaves {
            if failed.is_some() {
                return;
            }
            failed = verifier.push_dropped_leaf(*leaf).err();
        }
    })
    .await?;
    if let Some(problem) = failed {
        return Ok(Err(problem));
    }
    if let Err(missing) = read {
        return Ok(Err(verifier.problem(
            Some(missing as i64 + 1),
            "the hash tile holding this dropped event's leaf is missing",
        )));
    }
    Ok(verifier.resume_after(prefix))
}

/// The first of `filled` whose stored tile is missing or differs from it, as a problem at the
/// `seq` of the tile's last leaf.
async fn compare_tiles<S: crate::store::Store>(
    store: &S,
    tenant: &TenantId,
    filled: &[FullTile],
) -> Result<Option<Problem>, crate::store::StoreError> {
    if filled.is_empty() {
        return Ok(None);
    }
    let ids: Vec<_> = filled.iter().map(|tile| tile.id).collect();
    let stored = store.full_tiles(tenant, &ids).await?;
    let wrong = filled.iter().find_map(|tile| match stored.get(&tile.id) {
        Some(hashes) if *hashes == tile.hashes => None,
        Some(_) => Some((tile.id, "differs from the tree recomputed from the events")),
        None => Some((tile.id, "is missing")),
    });
    Ok(wrong.map(|(id, what)| {
        let path = Tile {
            kind: TileKind::Hashes { level: id.level },
            index: id.index,
            width: TILE_WIDTH as u16,
        }
        .path();
        Problem {
            tenant: tenant.clone(),
            seq: Some(i64::try_from(id.end_leaf()).unwrap_or(i64::MAX)),
            message: format!("the stored hash tile {path} {what}"),
        }
    }))
}

/// What an export says of a tenant's chain head beyond its events (`{"chain_head": …}`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportedHead {
    pub tenant: TenantId,
    /// See `Chained::recorded_at_ordered_from`.
    pub recorded_at_ordered_from: Seq,
    /// The chain head the export runs up to, its last event's `seq` and `hash`: an export cut
    /// short at a line's end is then told from a whole one. Absent in exports written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Digest>,
}

/// A line of an NDJSON export: a checkpoint (written before its tenant's events) or an event.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ExportLine {
    ChainHead { chain_head: ExportedHead },
    DroppedPrefix { dropped_prefix: ExportedPrefix },
    Checkpoint { checkpoint: Checkpoint },
    Event(Box<Event>),
}

/// Verifies an NDJSON export offline, with no database, against trusted keys and kept notes.
///
/// An export with neither events nor checkpoints is [`ExportError::Empty`]: it proves nothing,
/// and an `auditor export` of a log that has begun is never empty. A kept checkpoint of a tenant
/// the export does not mention fails that tenant, as a deleted log.
pub fn verify_export(
    lines: impl Iterator<Item = std::io::Result<String>>,
    keys: &[NoteVerifier],
    kept: &[String],
) -> Result<Vec<Result<Verified, Problem>>, ExportError> {
    let mut tenants: Vec<TenantVerifier> = Vec::new();
    let mut failed: HashMap<TenantId, Problem> = HashMap::new();
    let mut pending: HashMap<TenantId, Vec<Checkpoint>> = HashMap::new();
    // An export written before `recorded_at` was kept in order has no `chain_head` lines; its
    // order is then not judged.
    let mut ordered_from: HashMap<TenantId, Seq> = HashMap::new();
    let mut heads: HashMap<TenantId, (Seq, Digest)> = HashMap::new();
    let mut dropped: HashMap<TenantId, ExportedPrefix> = HashMap::new();
    for (number, line) in lines.enumerate() {
        let line = line.map_err(ExportError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = serde_json::from_str(&line).map_err(|_| {
            // An untagged enum's error names only the enum; an event's says what is amiss.
            let why = match serde_json::from_str::<Event>(&line) {
                Err(error) => format!(
                    "not a chain head, dropped prefix, checkpoint or event (read as an event: \
                     {error})"
                ),
                Ok(_) => "not a line of an export".to_owned(),
            };
            ExportError::Line(number + 1, why)
        })?;
        match parsed {
            ExportLine::ChainHead { chain_head } => {
                if let (Some(seq), Some(hash)) = (chain_head.seq, chain_head.hash) {
                    heads.insert(chain_head.tenant.clone(), (seq, hash));
                }
                ordered_from.insert(chain_head.tenant, chain_head.recorded_at_ordered_from);
            }
            ExportLine::DroppedPrefix { dropped_prefix } => {
                dropped.insert(dropped_prefix.tenant.clone(), dropped_prefix);
            }
            ExportLine::Checkpoint { checkpoint } => {
                pending
                    .entry(checkpoint.tenant.clone())
                    .or_default()
                    .push(checkpoint);
            }
            ExportLine::Event(event) => {
                if failed.contains_key(&event.tenant) {
                    continue;
                }
                let index = match tenants.iter().position(|t| t.tenant == event.tenant) {
                    Some(index) => index,
                    None => {
                        let mut checkpoints = pending.remove(&event.tenant).unwrap_or_default();
                        checkpoints.extend(for_tenant(kept, &event.tenant));
                        let from = ordered_from
                            .get(&event.tenant)
                            .copied()
                            .unwrap_or(Seq(i64::MAX));
                        let mut verifier =
                            TenantVerifier::new(event.tenant.clone(), keys.to_vec(), checkpoints)
                                .recorded_at_ordered_from(from);
                        if let Some(exported) = dropped.remove(&event.tenant)
                            && let Err(problem) = resume_exported(&mut verifier, &exported)
                        {
                            failed.insert(event.tenant.clone(), problem);
                        }
                        tenants.push(verifier);
                        tenants.len() - 1
                    }
                };
                if failed.contains_key(&event.tenant) {
                    continue;
                }
                if let Err(problem) = tenants[index].push(&event) {
                    failed.insert(event.tenant.clone(), problem);
                }
            }
        }
    }
    // Checkpoints of a tenant with no events left: its whole log was cut away.
    for (tenant, mut checkpoints) in pending {
        checkpoints.extend(for_tenant(kept, &tenant));
        tenants.push(TenantVerifier::new(tenant, keys.to_vec(), checkpoints));
    }
    if tenants.is_empty() {
        return Err(ExportError::Empty);
    }
    for name in kept.iter().filter_map(|note| kept_tenant(note)) {
        if !tenants.iter().any(|t| t.tenant.as_str() == name) {
            let tenant = TenantId::new(name);
            let checkpoints = for_tenant(kept, &tenant);
            tenants.push(TenantVerifier::new(tenant, keys.to_vec(), checkpoints));
        }
    }
    Ok(tenants
        .into_iter()
        .map(|verifier| match failed.remove(&verifier.tenant) {
            Some(problem) => Err(problem),
            None => {
                let head = heads.get(&verifier.tenant).copied();
                verifier.finish(head)
            }
        })
        .collect())
}

/// Resumes after the dropped prefix an export names.
fn resume_exported(
    verifier: &mut TenantVerifier,
    exported: &ExportedPrefix,
) -> Result<(), Problem> {
    match exported.prefix() {
        Some(prefix) => verifier.resume_after(prefix),
        None => Err(verifier.problem(
            Some(exported.through.0),
            "the export's dropped prefix does not decode (its tree edge does not fit its size)",
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot read the export: {0}")]
    Read(std::io::Error),
    #[error("export line {0} is neither an event nor a checkpoint: {1}")]
    Line(usize, String),
    #[error(
        "the export holds no events and no checkpoints, so nothing was verified \
         (`auditor export` writes at least one line for a log that has begun)"
    )]
    Empty,
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64_FOR_TESTS;
    use ed25519_dalek::SigningKey;
    use time::OffsetDateTime;

    use super::*;
    use crate::integrity::{Chained, LogSigner, chain_events};
    use crate::model::{Limits, NewEvent, RawEvent};

    fn signer() -> LogSigner {
        LogSigner::new(SigningKey::from_bytes(&[7; 32]), "example.com/log")
    }

    fn keys(tenants: &[&str]) -> Vec<NoteVerifier> {
        tenants
            .iter()
            .map(|t| NoteVerifier::parse(&signer().verifier_key(&TenantId::new(*t))).unwrap())
            .collect()
    }

    /// A tenant's log with one event recorded at each of `times`, and its final head.
    fn log(tenant: &str, times: &[OffsetDateTime]) -> (Vec<Event>, Chained) {
        let tenant = TenantId::new(tenant);
        let mut head = Chained::genesis();
        let mut events = Vec::new();
        for at in times {
            let raw: RawEvent = serde_json::from_value(
                serde_json::json!({"event_type": "a", "user_identity": "u"}),
            )
            .unwrap();
            let new = NewEvent::parse(raw, &Limits::default()).unwrap();
            let sealing = crate::integrity::commitment::seal(&new);
            let linked = chain_events(&mut head, &tenant, "w", *at, vec![(new, sealing)]);
            events.extend(linked.events);
        }
        (events, head)
    }

    /// An export of `events`, as `auditor export` writes it: the chain head line first.
    fn lines(events: &[Event]) -> impl Iterator<Item = std::io::Result<String>> {
        exported(events, Some(Seq(1)))
    }

    fn exported(
        events: &[Event],
        ordered_from: Option<Seq>,
    ) -> impl Iterator<Item = std::io::Result<String>> {
        let head = events.first().zip(ordered_from).map(|(first, seq)| {
            serde_json::json!({"chain_head": ExportedHead {
                tenant: first.tenant.clone(),
                recorded_at_ordered_from: seq,
                seq: None,
                hash: None,
            }})
            .to_string()
        });
        head.into_iter()
            .chain(events.iter().map(|e| serde_json::to_string(e).unwrap()))
            .map(Ok)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn a_recorded_at_before_the_previous_one_fails_at_its_seq() {
        let now = crate::model::event::truncate_to_micros(OffsetDateTime::now_utc());
        let earlier = now - time::Duration::hours(2);
        let (events, _) = log(
            "default",
            &[now, now, now + time::Duration::SECOND, earlier],
        );
        let results = verify_export(lines(&events), &keys(&["default"]), &[]).unwrap();
        let problem = results[0].clone().unwrap_err();
        assert_eq!(problem.seq, Some(4), "{problem}");
        assert!(
            problem.message.contains("recorded_at goes backwards"),
            "{problem}"
        );

        let (events, _) = log("default", &[earlier, now, now]);
        let results = verify_export(lines(&events), &keys(&["default"]), &[]).unwrap();
        assert_eq!(
            results[0].as_ref().map(|v| v.events),
            Ok(3),
            "equal times are fine"
        );
    }

    #[test]
    fn recorded_at_order_is_judged_from_the_chain_heads_seq() {
        let now = crate::model::event::truncate_to_micros(OffsetDateTime::now_utc());
        let earlier = now - time::Duration::hours(2);
        let (events, _) = log("default", &[now, earlier, earlier]);
        let verified = |ordered_from| {
            verify_export(exported(&events, ordered_from), &keys(&["default"]), &[])
                .unwrap()
                .remove(0)
        };
        assert_eq!(verified(Some(Seq(2))).unwrap_err().seq, Some(2));
        assert_eq!(verified(Some(Seq(3))).map(|v| v.events), Ok(3));
        assert_eq!(
            verified(None).map(|v| v.events),
            Ok(3),
            "an export written before the order was kept is not judged on it"
        );
    }

    #[test]
    fn an_export_without_events_or_checkpoints_is_an_error() {
        for content in ["", "\n", "  \n\n"] {
            let result = verify_export(
                content.lines().map(|l| Ok(l.to_owned())),
                &keys(&["default"]),
                &[],
            );
            assert!(matches!(result, Err(ExportError::Empty)), "{content:?}");
        }
    }

    #[test]
    fn a_kept_checkpoint_of_a_tenant_missing_from_the_export_fails_it() {
        let now = OffsetDateTime::now_utc();
        let (events, _) = log("a", &[now, now]);
        let (gone, head) = log("b", &[now]);
        let kept = signer().sign(&TenantId::new("b"), 1, gone[0].leaf_hash, now, None);
        assert_eq!(head.frontier.root(), kept.root);
        let results = verify_export(
            lines(&events),
            &keys(&["a", "b"]),
            std::slice::from_ref(&kept.note),
        )
        .unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].as_ref().map(|v| v.events), Ok(2));
        let problem = results[1].clone().unwrap_err();
        assert_eq!(problem.tenant, TenantId::new("b"));
        assert!(problem.message.contains("log truncated"), "{problem}");
    }

    /// A log of `size` events whose first `through` rows were dropped, as an export carries it:
    /// a checkpoint inside the prefix and one at the end, the prefix line, the retained events
    /// and the drop's record among them.
    fn dropped_export(through: usize, size: usize) -> (Vec<String>, Vec<Event>) {
        let tenant = TenantId::new("default");
        let now = crate::model::event::truncate_to_micros(OffsetDateTime::now_utc());
        let (mut events, mut head) = log("default", &vec![now; size]);
        let mut frontier = Frontier::default();
        let mut inside = None;
        for event in &events[..through] {
            frontier.push(event.leaf_hash);
            if frontier.size() == 100 {
                inside = Some(signer().sign(&tenant, 100, frontier.root(), now, None));
            }
        }
        let prefix = DroppedPrefix {
            through: Seq(through as i64),
            chain_hash: events[through - 1].hash,
            frontier,
        };
        let payload = crate::integrity::dropped::record_payload(Seq(1), &prefix, "p", "test");
        let data = serde_json::value::to_raw_value(&payload).unwrap();
        let raw = RawEvent::service_record(DROP_EVENT_TYPE, "auditor-retention", data);
        let record = NewEvent::parse_own(raw, &Limits::default()).unwrap();
        let sealing = crate::integrity::commitment::seal(&record);
        let linked = chain_events(&mut head, &tenant, "r", now, vec![(record, sealing)]);
        events.extend(linked.events);
        let inside = inside.unwrap();
        let last = signer().sign(
            &tenant,
            head.seq.0 as u64,
            head.frontier.root(),
            now,
            Some((100, inside.root)),
        );
        let mut lines = vec![
            serde_json::json!({ "checkpoint": inside }).to_string(),
            serde_json::json!({ "checkpoint": last }).to_string(),
            serde_json::json!({ "dropped_prefix": ExportedPrefix::new(tenant, &prefix) })
                .to_string(),
        ];
        lines.extend(
            events[through..]
                .iter()
                .map(|e| serde_json::to_string(e).unwrap()),
        );
        (lines, events)
    }

    #[test]
    fn an_export_verifies_from_its_dropped_prefix_and_its_checkpoints_stay_chained() {
        let (lines, events) = dropped_export(300, 320);
        let results = verify_export(lines.into_iter().map(Ok), &keys(&["default"]), &[]).unwrap();
        let verified = results[0].clone().unwrap();
        assert_eq!(verified.events, events.len() as u64);
        assert_eq!(verified.checkpoints, 2);
    }

    #[test]
    fn a_forged_dropped_prefix_fails_the_export() {
        let (mut lines, _) = dropped_export(300, 320);
        let mut prefix: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        let mut events = log("default", &[OffsetDateTime::UNIX_EPOCH; 299]).0;
        let mut forged = Frontier::default();
        for event in events.drain(..) {
            forged.push(event.leaf_hash);
        }
        forged.push(Digest::sha256(&[b"forged"]));
        prefix["dropped_prefix"]["frontier"] =
            serde_json::Value::from(BASE64_FOR_TESTS.encode(forged.to_bytes()));
        lines[2] = prefix.to_string();
        let results = verify_export(lines.into_iter().map(Ok), &keys(&["default"]), &[]).unwrap();
        let problem = results[0].clone().unwrap_err();
        assert!(
            problem
                .message
                .contains("differs from the signed checkpoint")
                || problem
                    .message
                    .contains("differs from what the record of its drop says"),
            "{problem}"
        );
    }

    #[test]
    fn a_log_starting_after_seq_1_without_a_drop_record_fails() {
        let (lines, _) = dropped_export(300, 320);
        // The record is the last event; without it the prefix is unaccounted for.
        let cut: Vec<String> = lines[..lines.len() - 1]
            .iter()
            .filter(|line| !line.contains("\"checkpoint\""))
            .cloned()
            .collect();
        let results = verify_export(cut.into_iter().map(Ok), &keys(&["default"]), &[]).unwrap();
        let problem = results[0].clone().unwrap_err();
        assert!(
            problem
                .message
                .contains("no audit.dropped record names that prefix"),
            "{problem}"
        );
    }
}
