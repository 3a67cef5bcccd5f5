//! Postings: what the equality filters find events by on SQLite (migration 0009). A posting is
//! `(field, value, seq)`: one per filterable field an event holds, `field` its name, and one per
//! scalar leaf of `event_data`, `field` being `event_data.` and the leaf's path (`data_index`).
//!
//! An append does not write them. They are kept in memory, in the [`Tail`], for the events
//! after the last flush, and written to the database in runs of thousands of events at once
//! (`runs`): one run is one contiguous range of `seq`s whose postings sit side by side in the
//! `postings` B-tree, so a flush writes whole pages in order instead of dirtying one random leaf
//! page per field per event at every commit, which was most of what an append cost. The tail is
//! rebuilt from `events` when the store opens: nothing in it is lost with the process.
//!
//! Postings narrow the candidates; every query rechecks its filters on the events' rows, so a
//! posting that outlives its value for a moment (a redaction in progress) is harmless, while
//! every event that matches always has its postings (the superset the queries rely on).

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use super::data_index::{IndexedValue, index_path, indexed_leaves};
use crate::model::fields::Cell;
use crate::model::{Event, FIELDS, Field, Filter, Seq, TenantId};

/// Fields found through postings. `id`, `idempotency_key` and `amends` are not: each has a
/// B-tree of its own on `events` (unique, or few rows), which answers them at once.
pub(super) fn is_posted(field: Field) -> bool {
    !matches!(field, Field::Id | Field::IdempotencyKey | Field::Amends)
}

/// A posting's value as `postings.value` holds it: the column's own value for a field, the
/// leaf's as `data_index` stores it for `event_data`. A number that is a whole number within
/// the `i64` range is held as an integer, so that `77` and `77.0` are one key in memory, as
/// they are equal to SQLite.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum PostingValue {
    Integer(i64),
    /// The bits of a number that is not a whole `i64` (never NaN: JSON has none).
    Real(u64),
    Text(Box<str>),
    Blob(Box<[u8]>),
}

impl PostingValue {
    fn of_indexed(value: &IndexedValue<'_>) -> Self {
        match *value {
            IndexedValue::Integer(i) => Self::Integer(i),
            IndexedValue::Real(f) => {
                // 2^63 is exact as an f64; every whole number in [-2^63, 2^63) converts exactly.
                const BOUND: f64 = 9_223_372_036_854_775_808.0;
                if f.fract() == 0.0 && (-BOUND..BOUND).contains(&f) {
                    Self::Integer(f as i64)
                } else {
                    Self::Real(f.to_bits())
                }
            }
            IndexedValue::Text(t) => Self::Text(t.into()),
            IndexedValue::Blob(b) => Self::Blob(b.into()),
        }
    }
}

impl rusqlite::ToSql for PostingValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
        Ok(match self {
            Self::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Self::Real(bits) => ToSqlOutput::Owned(SqlValue::Real(f64::from_bits(*bits))),
            Self::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Self::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

impl From<&PostingValue> for rusqlite::types::Value {
    fn from(value: &PostingValue) -> Self {
        match value {
            PostingValue::Integer(i) => Self::Integer(*i),
            PostingValue::Real(bits) => Self::Real(f64::from_bits(*bits)),
            PostingValue::Text(t) => Self::Text(t.to_string()),
            PostingValue::Blob(b) => Self::Blob(b.to_vec()),
        }
    }
}

/// What a posting is found by: `(postings.field, postings.value)`.
pub(super) type PostingKey = (Box<str>, PostingValue);

/// Keys with their `seq`s ascending, sorted by key: what a flush writes.
pub(super) type SortedPostings = Vec<(PostingKey, Vec<i64>)>;

/// The prefix of an `event_data` leaf's `postings.field`.
const DATA_PREFIX: &str = "event_data.";

/// The postings of an event's payload alone (what a redaction deletes).
pub(super) fn data_postings(data: &serde_json::Map<String, Value>) -> Vec<PostingKey> {
    let mut leaves = Vec::new();
    indexed_leaves("", data, &mut leaves);
    leaves
        .iter()
        .map(|(path, value)| {
            (
                format!("{DATA_PREFIX}{path}").into_boxed_str(),
                PostingValue::of_indexed(value),
            )
        })
        .collect()
}

/// Every posting of an event.
pub(super) fn postings_of(event: &Event) -> Vec<PostingKey> {
    let mut postings = event
        .event_data
        .as_ref()
        .map(data_postings)
        .unwrap_or_default();
    let columns = event.columns();
    for &(field, column) in POSTED_COLUMNS.iter() {
        let value = match &columns[column] {
            None => continue,
            Some(Cell::Text(text)) => PostingValue::Text(text.as_ref().into()),
            Some(other) => unreachable!("{} is a text column, not {other:?}", field.name()),
        };
        postings.push((field.name().into(), value));
    }
    postings
}

/// Each posted field and its place in [`FIELDS`].
static POSTED_COLUMNS: LazyLock<Vec<(Field, usize)>> = LazyLock::new(|| {
    Field::ALL
        .iter()
        .filter(|field| is_posted(**field))
        .map(|&field| {
            let column = FIELDS.iter().position(|f| f.name == field.name());
            (field, column.expect("a filter field is a declared field"))
        })
        .collect()
});

/// The posting a filter finds its events by, if postings serve it.
pub(super) fn posting_of(filter: &Filter) -> Option<PostingKey> {
    match filter {
        Filter::Equals(field, value) if is_posted(*field) => Some((
            field.name().into(),
            PostingValue::Text(value.as_str().into()),
        )),
        Filter::Equals(..) => None,
        Filter::Data(path, value) => Some((
            format!("{DATA_PREFIX}{}", index_path(path.segments())).into_boxed_str(),
            PostingValue::of_indexed(&IndexedValue::of_scalar(value)),
        )),
    }
}

/// A batch's postings gathered by key, per tenant with the batch's last `seq`: computed apart
/// from the tail (beside the batch's insert and commit, on another thread), so that adding them
/// holds the tail's lock only to merge one list per distinct key.
#[derive(Default)]
pub(super) struct BatchPostings {
    tenants: HashMap<TenantId, (i64, HashMap<PostingKey, Vec<i64>>)>,
}

impl BatchPostings {
    /// The postings of `events`, which are in ascending `seq` order per tenant.
    pub fn of(events: &[Event]) -> Self {
        let mut batch = Self::default();
        for event in events {
            let (last, postings) = batch.tenants.entry(event.tenant.clone()).or_default();
            *last = event.seq.0;
            for key in postings_of(event) {
                postings.entry(key).or_default().push(event.seq.0);
            }
        }
        batch
    }
}

/// The postings of the events after the last flush, per tenant, in memory.
#[derive(Default)]
pub(super) struct Tail {
    /// False until [`runs::load_tail`](super::runs::load_tail) has read the database.
    pub loaded: bool,
    tenants: HashMap<TenantId, TenantTail>,
}

/// One tenant's tail: the events in `(flushed, last]`. Those up to `frozen_last` are being
/// written as a run, in chunks (`frozen`, sorted by key); those after it are `postings`.
#[derive(Default)]
pub(super) struct TenantTail {
    /// The last `seq` whose postings are in the database's live runs.
    pub flushed: i64,
    /// The last `seq` in the tail (`flushed` when it is empty).
    pub last: i64,
    /// The run being flushed, and the last key written to it so far.
    pub flushing: Option<Flushing>,
    /// The postings of `(flushed, frozen_last]`, sorted by key, each key's `seq`s ascending.
    pub frozen: SortedPostings,
    pub frozen_last: i64,
    /// The postings of `(frozen_last, last]`, each key's `seq`s ascending.
    pub postings: HashMap<PostingKey, Vec<i64>>,
}

/// A flush under way: its `posting_runs` row, and the last key it has written.
pub(super) struct Flushing {
    pub run: i64,
    pub written: Option<PostingKey>,
}

impl TenantTail {
    /// Events not yet frozen for a flush.
    pub fn unfrozen(&self) -> i64 {
        self.last - self.frozen_last
    }

    /// Freezes the postings gathered so far (`postings`, sorted by key: those of the events
    /// up to `last`, which the caller has taken) for a flush into `run`.
    pub fn freeze(&mut self, run: i64, postings: SortedPostings) {
        self.frozen = postings;
        self.frozen_last = self.last;
        self.flushing = Some(Flushing { run, written: None });
    }

    /// The frozen postings after the last key written, up to `rows` `seq`s (whole keys).
    pub fn unwritten(&self, rows: usize) -> &[(PostingKey, Vec<i64>)] {
        let start = match self.flushing.as_ref().and_then(|f| f.written.as_ref()) {
            Some(written) => self.frozen.partition_point(|(key, _)| key <= written),
            None => 0,
        };
        let mut end = start;
        let mut taken = 0;
        while end < self.frozen.len() && taken < rows {
            taken += self.frozen[end].1.len();
            end += 1;
        }
        &self.frozen[start..end]
    }

    /// A key's `seq`s in the whole tail, ascending.
    fn seqs(&self, key: &PostingKey) -> Vec<i64> {
        let mut seqs = match self.frozen.binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(at) => self.frozen[at].1.clone(),
            Err(_) => Vec::new(),
        };
        seqs.extend(self.postings.get(key).into_iter().flatten());
        seqs
    }
}

/// What a reader takes from the tail before it reads the database: the events after
/// `flushed` that may match, ascending; the database's runs answer for those up to `flushed`.
pub(super) struct TailMatches {
    pub flushed: i64,
    pub seqs: Vec<i64>,
}

impl Tail {
    /// Starts a tenant's tail after `flushed` (when the tail is loaded).
    pub fn start(&mut self, tenant: TenantId, flushed: i64) {
        self.tenants.insert(
            tenant,
            TenantTail {
                flushed,
                last: flushed,
                frozen_last: flushed,
                ..TenantTail::default()
            },
        );
    }

    /// Adds committed events, in `seq` order per tenant.
    pub fn add(&mut self, events: &[Event]) {
        self.add_batch(BatchPostings::of(events));
    }

    /// Adds a batch's postings, gathered beforehand (see [`BatchPostings`]).
    pub fn add_batch(&mut self, batch: BatchPostings) {
        for (tenant, (last, postings)) in batch.tenants {
            let tail = self.tenants.entry(tenant).or_default();
            tail.last = last;
            for (key, seqs) in postings {
                tail.postings.entry(key).or_default().extend(seqs);
            }
        }
    }

    /// Forgets postings of an event (its payload's, after a redaction committed), frozen or
    /// not; a frozen one already written was deleted from the run with the payload.
    pub fn remove(&mut self, tenant: &TenantId, seq: Seq, keys: &[PostingKey]) {
        let Some(tenant) = self.tenants.get_mut(tenant) else {
            return;
        };
        for key in keys {
            if let Ok(at) = tenant.frozen.binary_search_by(|(k, _)| k.cmp(key)) {
                let seqs = &mut tenant.frozen[at].1;
                if let Ok(i) = seqs.binary_search(&seq.0) {
                    seqs.remove(i);
                }
            }
            if let Some(seqs) = tenant.postings.get_mut(key)
                && let Ok(at) = seqs.binary_search(&seq.0)
            {
                seqs.remove(at);
                if seqs.is_empty() {
                    tenant.postings.remove(key);
                }
            }
        }
    }

    /// Events not yet frozen for a flush, over every tenant.
    pub fn unfrozen(&self) -> i64 {
        self.tenants.values().map(TenantTail::unfrozen).sum()
    }

    pub fn tenants(&self) -> impl Iterator<Item = (&TenantId, &TenantTail)> {
        self.tenants.iter()
    }

    pub fn tenant_mut(&mut self, tenant: &TenantId) -> Option<&mut TenantTail> {
        self.tenants.get_mut(tenant)
    }

    /// The tail's events that hold every key, and where the runs end. Keys are tried rarest
    /// first; `keys` is reordered that way, which is the best guess the runs' queries have too.
    pub fn matches(&self, tenant: &TenantId, keys: &mut [PostingKey]) -> TailMatches {
        let Some(tail) = self.tenants.get(tenant) else {
            return TailMatches {
                flushed: 0,
                seqs: Vec::new(),
            };
        };
        let mut lists: Vec<(PostingKey, Vec<i64>)> = keys
            .iter()
            .map(|key| (key.clone(), tail.seqs(key)))
            .collect();
        lists.sort_by_key(|(_, seqs)| seqs.len());
        for (slot, (key, _)) in keys.iter_mut().zip(&lists) {
            *slot = key.clone();
        }
        let seqs = match lists.split_first() {
            None => Vec::new(),
            Some(((_, rarest), others)) => rarest
                .iter()
                .copied()
                .filter(|seq| {
                    others
                        .iter()
                        .all(|(_, list)| list.binary_search(seq).is_ok())
                })
                .collect(),
        };
        TailMatches {
            flushed: tail.flushed,
            seqs,
        }
    }
}
