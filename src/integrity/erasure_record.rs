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

/// Personal fields as a set of bits, one per [`Personal::ALL`] entry.
pub fn field_bits(fields: impl IntoIterator<Item = Personal>) -> u8 {
    fields.into_iter().fold(0, |bits, field| {
        bits | Personal::ALL
            .iter()
            .position(|f| *f == field)
            .map_or(0, |i| 1 << i)
    })
}

/// The names of the fields in `bits`.
pub fn field_names(bits: u8) -> Vec<&'static str> {
    Personal::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, field)| field.name())
        .collect()
}

/// The fields an erasure record's payload says it applies to; every personal field for a record
/// that does not say (the `audit.redacted` records written before records named them).
pub fn record_fields(data: &Map<String, Value>) -> u8 {
    match data.get("fields").and_then(Value::as_array) {
        Some(names) => field_bits(
            names
                .iter()
                .filter_map(|name| Personal::parse(name.as_str()?)),
        ),
        None => field_bits(Personal::ALL),
    }
}

/// Erased rows read at one erasure time that lost the same fields, as a `seq` range, with the
/// fields the records of that time naming them have granted so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    first: i64,
    last: i64,
    lost: u8,
    granted: u8,
}

impl Pending {
    fn accounted_for(&self) -> bool {
        self.lost & !self.granted == 0
    }
}

/// Erased rows a verifier has read that their erasure records have not accounted for yet, as
/// `seq` ranges per erasure time (all rows one erasure touched share its commit time). Memory
/// grows with the number of separate ranges, not of rows: a retention batch is one range.
///
/// A row may have lost only fields that the records naming it name: records committed at the
/// same time grant nothing to the rows they do not name, so one erasure committed beside a
/// redaction cannot cover for a field taken from the redacted row.
#[derive(Debug, Default)]
pub struct ErasureRecords {
    pending: BTreeMap<OffsetDateTime, Vec<Pending>>,
    /// Every erased row read so far, as ascending runs of `seq`s: a record may name only these.
    all: Vec<(i64, i64)>,
}

impl ErasureRecords {
    /// Row `seq` lost `fields` (bits, [`field_bits`]) by the erasure that committed at `when`;
    /// rows come in `seq` order.
    pub fn erased(&mut self, seq: Seq, when: OffsetDateTime, fields: u8) {
        match self.all.last_mut() {
            Some((_, last)) if *last + 1 == seq.0 => *last = seq.0,
            _ => self.all.push((seq.0, seq.0)),
        }
        let ranges = self.pending.entry(when).or_default();
        match ranges.last_mut() {
            Some(range)
                if range.last + 1 == seq.0 && range.lost == fields && range.granted == 0 =>
            {
                range.last = seq.0;
            }
            _ => ranges.push(Pending {
                first: seq.0,
                last: seq.0,
                lost: fields,
                granted: 0,
            }),
        }
    }

    /// A record committed at `when` names the rows of `covered` and the fields `fields`: those
    /// rows are granted those fields, and are accounted for once granted every field they lost
    /// (possibly by several records of the same commit). What is still missing at the end of
    /// the log is [`first_unaccounted`](Self::first_unaccounted)'s.
    pub fn recorded(&mut self, when: OffsetDateTime, covered: &[(i64, i64)], fields: u8) {
        let Some(ranges) = self.pending.get_mut(&when) else {
            return;
        };
        let mut covered = covered.to_vec();
        covered.sort_unstable();
        let mut left = Vec::with_capacity(ranges.len());
        for range in ranges.drain(..) {
            // The part of `range` not yet split off, from this `seq` on.
            let mut rest = Some(range.first);
            for &(c_first, c_last) in &covered {
                let Some(from) = rest else { break };
                if c_last < from || c_first > range.last {
                    continue;
                }
                if c_first > from {
                    left.push(Pending {
                        first: from,
                        last: c_first - 1,
                        ..range
                    });
                }
                let named = Pending {
                    first: from.max(c_first),
                    last: c_last.min(range.last),
                    granted: range.granted | fields,
                    ..range
                };
                if !named.accounted_for() {
                    left.push(named);
                }
                rest = named.last.checked_add(1).filter(|next| *next <= range.last);
            }
            if let Some(from) = rest {
                left.push(Pending {
                    first: from,
                    ..range
                });
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

    /// The smallest erased `seq` its records have not accounted for, and the fields it lost
    /// that none of them names (every field it lost when no record names it).
    pub fn first_unaccounted(&self) -> Option<(i64, Unaccounted)> {
        self.pending
            .values()
            .flatten()
            .min_by_key(|range| range.first)
            .map(|range| {
                let why = if range.granted == 0 {
                    Unaccounted::NoRecord
                } else {
                    Unaccounted::FieldsNotNamed(range.lost & !range.granted)
                };
                (range.first, why)
            })
    }
}

/// Why an erased row is not accounted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unaccounted {
    /// No record of its erasure time names it.
    NoRecord,
    /// The records naming it do not name these fields (bits) it lost.
    FieldsNotNamed(u8),
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
        let all = field_bits(Personal::ALL);
        let mut pending = ErasureRecords::default();
        for seq in [2, 3, 4, 5] {
            pending.erased(Seq(seq), at, all);
        }
        pending.erased(Seq(6), other, all);
        pending.erased(Seq(9), at, all);
        let unrecorded = |pending: &ErasureRecords| pending.first_unaccounted().map(|(seq, _)| seq);
        pending.recorded(other, &[(1, 5)], all);
        assert_eq!(unrecorded(&pending), Some(2), "another time's record");
        assert_eq!(
            pending.first_unaccounted(),
            Some((2, Unaccounted::NoRecord))
        );
        pending.recorded(at, &[(3, 4)], all);
        assert_eq!(unrecorded(&pending), Some(2));
        pending.recorded(at, &[(5, 5), (1, 2)], all);
        assert_eq!(unrecorded(&pending), Some(6));
        pending.recorded(other, &[(6, 6)], all);
        assert_eq!(unrecorded(&pending), Some(9));
        pending.recorded(at, &[(9, i64::MAX)], all);
        assert_eq!(unrecorded(&pending), None);
        assert_eq!(pending.first_not_erased(1, 10, 11), Some(1));
        assert_eq!(pending.first_not_erased(2, 6, 11), None);
        assert_eq!(pending.first_not_erased(5, 9, 11), Some(7));
        assert_eq!(
            pending.first_not_erased(9, 12, 10),
            None,
            "12 is not read yet"
        );
    }

    #[test]
    fn a_row_may_lose_only_what_the_records_naming_it_name() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let payload = field_bits([Personal::EventData]);
        let actor = field_bits([Personal::UserIdentity]);
        let all = field_bits(Personal::ALL);
        // A redaction of 5 and an erasure of 6, committed together: no false alarm.
        let mut pending = ErasureRecords::default();
        pending.erased(Seq(5), at, payload);
        pending.erased(Seq(6), at, all);
        pending.recorded(at, &[(5, 5)], payload);
        pending.recorded(at, &[(6, 6)], all);
        assert_eq!(pending.first_unaccounted(), None);
        // The same, but 5 lost its actor too: the erasure of 6 does not cover for it.
        let mut pending = ErasureRecords::default();
        pending.erased(Seq(5), at, payload | actor);
        pending.erased(Seq(6), at, all);
        pending.recorded(at, &[(5, 5)], payload);
        pending.recorded(at, &[(6, 6)], all);
        assert_eq!(
            pending.first_unaccounted(),
            Some((5, Unaccounted::FieldsNotNamed(actor)))
        );
        assert_eq!(field_names(actor), ["user_identity"]);
        // Two records of one commit naming the same row add up.
        let mut pending = ErasureRecords::default();
        pending.erased(Seq(5), at, payload | actor);
        pending.recorded(at, &[(5, 5)], payload);
        pending.recorded(at, &[(4, 5)], actor);
        assert_eq!(pending.first_unaccounted(), None);
        // A record naming part of a range grants that part alone.
        let mut pending = ErasureRecords::default();
        for seq in 1..=4 {
            pending.erased(Seq(seq), at, all);
        }
        pending.recorded(at, &[(2, 3)], all);
        assert_eq!(
            pending.first_unaccounted(),
            Some((1, Unaccounted::NoRecord))
        );
        pending.recorded(at, &[(1, 1)], all);
        assert_eq!(
            pending.first_unaccounted(),
            Some((4, Unaccounted::NoRecord))
        );
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
