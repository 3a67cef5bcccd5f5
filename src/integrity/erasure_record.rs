//! The record of an erasure: the payload of an `audit.erased` (or `audit.redacted`) event, which
//! names the erased events by `seq` ranges, the fields erased and the reason, never the values:
//!
//! ```json
//! {"erased": [[3, 3], [7, 12]], "fields": ["event_data", "user_identity"], "reason": "GDPR art. 17, ticket 42"}
//! ```
//!
//! and, for the verifier, which erased rows still wait for theirs.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::model::{Personal, Seq};

/// `seq`s as inclusive ranges `[first, last]`, ascending and not adjacent to each other.
pub fn ranges(seqs: impl IntoIterator<Item = Seq>) -> Vec<(i64, i64)> {
    let mut seqs: Vec<i64> = seqs.into_iter().map(|seq| seq.0).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for seq in seqs {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => out.push((seq, seq)),
        }
    }
    out
}

/// The payload of an erasure record.
pub fn record_payload(
    erased: &[(i64, i64)],
    fields: &[Personal],
    reason: &str,
) -> Map<String, Value> {
    let mut data = Map::new();
    let ranges = erased
        .iter()
        .map(|(first, last)| Value::from(vec![*first, *last]))
        .collect::<Vec<_>>();
    data.insert("erased".into(), Value::from(ranges));
    let names = fields
        .iter()
        .map(|f| Value::from(f.name()))
        .collect::<Vec<_>>();
    data.insert("fields".into(), Value::from(names));
    data.insert("reason".into(), Value::from(reason));
    data
}

/// The `seq` ranges an erasure record's payload names, if it names any in the expected shape.
pub fn erased_ranges(data: &Map<String, Value>) -> Option<Vec<(i64, i64)>> {
    data.get("erased")?
        .as_array()?
        .iter()
        .map(|range| match range.as_array()?.as_slice() {
            [first, last] => Some((first.as_i64()?, last.as_i64()?)),
            _ => None,
        })
        .collect()
}

/// Erased rows a verifier has read whose erasure record it has not read yet, as `seq` ranges
/// per erasure time (all rows one erasure touched share its commit time). Memory grows with the
/// number of separate ranges, not of rows: a retention batch is one range.
#[derive(Debug, Default)]
pub struct ErasureRecords {
    pending: BTreeMap<OffsetDateTime, Vec<(i64, i64)>>,
    /// Every erased row read so far, as ascending runs of `seq`s: a record may name only these.
    all: Vec<(i64, i64)>,
}

impl ErasureRecords {
    /// Row `seq` was erased by the erasure that committed at `when`; rows come in `seq` order.
    pub fn erased(&mut self, seq: Seq, when: OffsetDateTime) {
        match self.all.last_mut() {
            Some((_, last)) if *last + 1 == seq.0 => *last = seq.0,
            _ => self.all.push((seq.0, seq.0)),
        }
        let ranges = self.pending.entry(when).or_default();
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == seq.0 => *last = seq.0,
            _ => ranges.push((seq.0, seq.0)),
        }
    }

    /// A record committed at `when` names `covered`: those rows are accounted for.
    pub fn recorded(&mut self, when: OffsetDateTime, covered: &[(i64, i64)]) {
        let Some(ranges) = self.pending.get_mut(&when) else {
            return;
        };
        let mut left = Vec::new();
        for &(first, last) in ranges.iter() {
            let mut from = first;
            for &(c_first, c_last) in covered {
                if c_last < from || c_first > last {
                    continue;
                }
                if c_first > from {
                    left.push((from, c_first - 1));
                }
                from = from.max(c_last.saturating_add(1));
                if from > last {
                    break;
                }
            }
            if from <= last {
                left.push((from, last));
            }
        }
        if left.is_empty() {
            self.pending.remove(&when);
        } else {
            *ranges = left;
        }
    }

    /// The first `seq` of `first..=last` that was read and is not erased, if any; `seq`s not
    /// read yet (at or after `next`) are not judged.
    pub fn first_not_erased(&self, first: i64, last: i64, next: i64) -> Option<i64> {
        let last = last.min(next - 1);
        let mut seq = first;
        while seq <= last {
            let run = self.all.partition_point(|(_, end)| *end < seq);
            match self.all.get(run) {
                Some((start, end)) if *start <= seq => seq = end.saturating_add(1),
                _ => return Some(seq),
            }
        }
        None
    }

    /// The smallest erased `seq` no record has accounted for.
    pub fn first_unrecorded(&self) -> Option<i64> {
        self.pending
            .values()
            .filter_map(|ranges| ranges.first().map(|(first, _)| *first))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_become_ranges() {
        let seqs = [7, 3, 8, 9, 12, 3].map(Seq);
        assert_eq!(ranges(seqs), vec![(3, 3), (7, 9), (12, 12)]);
        assert!(ranges([]).is_empty());
    }

    #[test]
    fn a_record_accounts_for_exactly_the_rows_it_names_at_its_time() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let other = at + time::Duration::seconds(1);
        let mut pending = ErasureRecords::default();
        for seq in [2, 3, 4, 5, 9] {
            pending.erased(Seq(seq), at);
        }
        pending.erased(Seq(6), other);
        pending.recorded(other, &[(1, 5)]);
        assert_eq!(pending.first_unrecorded(), Some(2), "another time's record");
        pending.recorded(at, &[(3, 4)]);
        assert_eq!(pending.first_unrecorded(), Some(2));
        pending.recorded(at, &[(1, 2), (5, 5)]);
        assert_eq!(pending.first_unrecorded(), Some(6));
        pending.recorded(other, &[(6, 6)]);
        assert_eq!(pending.first_unrecorded(), Some(9));
        pending.recorded(at, &[(9, 9)]);
        assert_eq!(pending.first_unrecorded(), None);
    }

    #[test]
    fn the_payload_names_ranges_fields_and_reason() {
        let data = record_payload(&[(1, 1), (4, 6)], &[Personal::UserIdentity], "why");
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            r#"{"erased":[[1,1],[4,6]],"fields":["user_identity"],"reason":"why"}"#
        );
        assert_eq!(erased_ranges(&data), Some(vec![(1, 1), (4, 6)]));
    }
}
