//! Verification of a whole log, streamed in `seq` order with constant memory: every payload
//! hash, leaf, chain link and signed checkpoint is recomputed, and the first problem reported
//! with the `seq` where it shows. The same checker reads the database or an NDJSON export.

use std::collections::{HashMap, VecDeque};

use super::chain::{chain_hash, event_data_hash, leaf_hash};
use super::checkpoint::{Checkpoint, NoteVerifier, parse_checkpoint_text, predecessor_line};
use super::erasure_record::{ErasureRecords, erased_ranges};
use super::merkle::Frontier;
use super::tiles::{FullTile, TILE_WIDTH, Tile, TileKind};
use crate::model::Digest;
use crate::model::{Event, EventId, Seq, TenantId};

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
        self.match_erasure_record(event);
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
        while let Some(checkpoint) = self.checkpoints.front() {
            if checkpoint.tree_size > self.frontier.size() {
                break;
            }
            let checkpoint = self
                .checkpoints
                .pop_front()
                .unwrap_or_else(|| unreachable!());
            self.check_checkpoint(&checkpoint)?;
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
                    self.erasures.erased(event.seq, when);
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
            (Some(_), Some(when), None) => self.erasures.erased(event.seq, when),
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
    fn match_erasure_record(&mut self, event: &Event) {
        if event.event_type != REDACTION_EVENT_TYPE && event.event_type != ERASURE_EVENT_TYPE {
            return;
        }
        if let Some(ranges) = event.event_data.as_ref().and_then(erased_ranges) {
            self.erasures.recorded(event.recorded_at, &ranges);
        } else if event.event_type == REDACTION_EVENT_TYPE
            && let Some(target) = event.amends
            && let Some((seq, hash, when)) = self.erased_by_id.get(&target).copied()
            && event.amends_hash == Some(hash)
            && event.recorded_at == when
        {
            self.erased_by_id.remove(&target);
            self.erasures.recorded(when, &[(seq.0, seq.0)]);
        }
    }

    fn check_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), Problem> {
        let size = checkpoint.tree_size;
        let at = Some(size as i64);
        if size != self.frontier.size() {
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
        if self.frontier.root() != signed_root {
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
        if let Some(seq) = self.erasures.first_unrecorded() {
            return Err(self.problem(
                Some(seq),
                "fields erased without an erasure event recording it",
            ));
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
    mut progress: impl FnMut(&TenantId, u64),
) -> Result<Vec<Result<Verified, Problem>>, crate::store::StoreError> {
    let mut tenants = store.tenants().await?;
    // A kept checkpoint of a tenant the database no longer knows is a deleted log.
    for name in kept.iter().filter_map(|note| kept_tenant(note)) {
        if !tenants.iter().any(|t| t.as_str() == name) {
            tenants.push(TenantId::new(name));
        }
    }
    let mut results = Vec::new();
    for tenant in tenants {
        // Read the head first and verify up to it: events appended meanwhile are not this
        // run's business, and must not look like a rewritten tail.
        let (chained, unreadable_head) = match store.head(&tenant).await {
            Ok(chained) => (chained, None),
            // A head that does not decode (say its partial tiles no longer fit the events) is
            // a problem of this log; its events are still checked, so that a deleted or changed
            // event is named where it shows.
            Err(crate::store::StoreError::Other(error)) => (None, Some(format!("{error:#}"))),
            Err(other) => return Err(other),
        };
        let ordered_from = chained
            .as_ref()
            .map_or(Seq(1), |h| h.recorded_at_ordered_from);
        let head = chained.as_ref().map(|h| (h.seq, h.hash));
        let until = head.map(|(seq, _)| seq);
        let mut checkpoints = store.checkpoints(&tenant).await?;
        checkpoints.extend(for_tenant(kept, &tenant));
        let mut verifier = TenantVerifier::new(tenant.clone(), keys.to_vec(), checkpoints)
            .recorded_at_ordered_from(ordered_from)
            .collect_tiles();
        // Each page is checked on a blocking thread while the next one is fetched: the
        // database's decoding and the hashing run side by side.
        let mut pages = crate::store::Pages::new(store.clone(), tenant.clone(), until);
        let mut failed = None;
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
                failed = Some(problem);
                break;
            }
            // Every tile the events fill must be stored as recomputed: proofs and tile reads
            // are served from the stored ones.
            let filled = verifier.take_tiles();
            if let Some(problem) = compare_tiles(store, &tenant, &filled).await? {
                failed = Some(problem);
                break;
            }
            progress(&tenant, last as u64);
        }
        let edge = verifier.frontier().clone();
        results.push(match failed {
            Some(problem) => Err(problem),
            None => verifier.finish(head).and_then(|verified| {
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
                        message: "the chain head's partial tiles differ from the tree \
                                  recomputed from the events"
                            .into(),
                    }),
                    _ => Ok(verified),
                }
            }),
        });
    }
    Ok(results)
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
}

/// A line of an NDJSON export: a checkpoint (written before its tenant's events) or an event.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum ExportLine {
    ChainHead { chain_head: ExportedHead },
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
    for (number, line) in lines.enumerate() {
        let line = line.map_err(ExportError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: ExportLine = serde_json::from_str(&line)
            .map_err(|e| ExportError::Line(number + 1, e.to_string()))?;
        match parsed {
            ExportLine::ChainHead { chain_head } => {
                ordered_from.insert(chain_head.tenant, chain_head.recorded_at_ordered_from);
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
                        tenants.push(
                            TenantVerifier::new(event.tenant.clone(), keys.to_vec(), checkpoints)
                                .recorded_at_ordered_from(from),
                        );
                        tenants.len() - 1
                    }
                };
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
            None => verifier.finish(None),
        })
        .collect())
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
            let fingerprint = new.fingerprint();
            let linked = chain_events(&mut head, &tenant, "w", *at, vec![(new, fingerprint)]);
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
}
