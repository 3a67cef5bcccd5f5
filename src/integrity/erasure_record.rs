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

/// Erased rows read at one erasure time and not yet accounted for: their `seq` ranges, and every
/// field any of them lost.
#[derive(Debug, Default)]
struct Pending {
    ranges: Vec<(i64, i64)>,
    fields: u8,
}

/// Erased rows a verifier has read whose erasure record it has not read yet, as `seq` ranges
/// per erasure time (all rows one erasure touched share its commit time). Memory grows with the
/// number of separate ranges, not of rows: a retention batch is one range.
///
/// The fields the rows of one erasure time lost must be among those its records name: a
/// redaction takes the payload alone.
#[derive(Debug, Default)]
pub struct ErasureRecords {
    pending: BTreeMap<OffsetDateTime, Pending>,
    /// The fields the records read so far at each erasure time with rows still pending name.
    granted: BTreeMap<OffsetDateTime, u8>,
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
        let pending = self.pending.entry(when).or_default();
        pending.fields |= fields;
        let ranges = &mut pending.ranges;
        match ranges.last_mut() {
            Some((_, last)) if *last + 1 == seq.0 => *last = seq.0,
            _ => ranges.push((seq.0, seq.0)),
        }
    }

    /// A record committed at `when` names `covered` and `fields`: those rows are accounted for.
    /// Once every row of `when` is, the fields they lost beyond those its records name are the
    /// error (bits).
    pub fn recorded(
        &mut self,
        when: OffsetDateTime,
        covered: &[(i64, i64)],
        fields: u8,
    ) -> Result<(), u8> {
        let Some(pending) = self.pending.get_mut(&when) else {
            return Ok(());
        };
        let granted = self.granted.entry(when).or_default();
        *granted |= fields;
        let granted = *granted;
        let ranges = &mut pending.ranges;
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
        if !left.is_empty() {
            *ranges = left;
            return Ok(());
        }
        let lost = pending.fields;
        self.pending.remove(&when);
        self.granted.remove(&when);
        match lost & !granted {
            0 => Ok(()),
            beyond => Err(beyond),
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
            .filter_map(|pending| pending.ranges.first().map(|(first, _)| *first))
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
        let all = field_bits(Personal::ALL);
        let mut pending = ErasureRecords::default();
        for seq in [2, 3, 4, 5] {
            pending.erased(Seq(seq), at, all);
        }
        pending.erased(Seq(6), other, all);
        pending.erased(Seq(9), at, all);
        assert_eq!(pending.recorded(other, &[(1, 5)], all), Ok(()));
        assert_eq!(pending.first_unrecorded(), Some(2), "another time's record");
        assert_eq!(pending.recorded(at, &[(3, 4)], all), Ok(()));
        assert_eq!(pending.first_unrecorded(), Some(2));
        assert_eq!(pending.recorded(at, &[(1, 2), (5, 5)], all), Ok(()));
        assert_eq!(pending.first_unrecorded(), Some(6));
        assert_eq!(pending.recorded(other, &[(6, 6)], all), Ok(()));
        assert_eq!(pending.first_unrecorded(), Some(9));
        assert_eq!(pending.recorded(at, &[(9, 9)], all), Ok(()));
        assert_eq!(pending.first_unrecorded(), None);
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
    fn rows_of_one_commit_may_lose_what_any_of_its_records_names_and_no_more() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let payload = field_bits([Personal::EventData]);
        let all = field_bits(Personal::ALL);
        // A redaction of 5 and an erasure of 6, committed together: no false alarm.
        let mut pending = ErasureRecords::default();
        pending.erased(Seq(5), at, payload);
        pending.erased(Seq(6), at, all);
        assert_eq!(pending.recorded(at, &[(5, 5)], payload), Ok(()));
        assert_eq!(pending.recorded(at, &[(6, 6)], all), Ok(()));
        // A redaction alone whose row lost its actor too.
        let mut pending = ErasureRecords::default();
        let actor = field_bits([Personal::UserIdentity]);
        pending.erased(Seq(5), at, payload | actor);
        assert_eq!(pending.recorded(at, &[(5, 5)], payload), Err(actor));
        assert_eq!(field_names(actor), ["user_identity"]);
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
