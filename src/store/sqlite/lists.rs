//! Posting lists (migration 0010): how a key's `seq`s in a run are stored and read back.
//!
//! A key's `seq`s in a run are cut into blocks of at most [`BLOCK_SEQS`], ascending; a block is
//! one row of `posting_lists`, keyed `(run, field, value, first_seq)`, whose `seqs` column holds
//! the block's other `seq`s as unsigned LEB128 varints, each the difference from the one
//! before (so a key found once in a run costs a row with an empty blob, and a frequent one
//! about a byte per event). A reader seeks a block by `first_seq` and decodes it whole.

use std::collections::VecDeque;

use integer_encoding::VarInt;
use rusqlite::types::Type;
use rusqlite::{Connection, Row, params};

use super::postings::{PostingKey, PostingValue};
use crate::model::Order;
use crate::store::StoreError;

/// Most `seq`s in a block: a page of 100 results decodes one block per key, and a flush or a
/// merge writes a frequent key's `seq`s in rows of about 150 bytes.
pub(super) const BLOCK_SEQS: usize = 128;

/// A block's first `seq` and the encoding of the others. `seqs` is not empty and ascending.
pub(super) fn encode(seqs: &[i64]) -> (i64, Vec<u8>) {
    let mut bytes = Vec::with_capacity(seqs.len());
    for pair in seqs.windows(2) {
        let delta = (pair[1] - pair[0]) as u64;
        let mut buf = [0u8; 10];
        let written = delta.encode_var(&mut buf);
        bytes.extend_from_slice(&buf[..written]);
    }
    (seqs[0], bytes)
}

/// A key's `seq`s (ascending, any number) cut into blocks: `(first_seq, seqs)` per row.
pub(super) fn blocks(seqs: &[i64]) -> impl Iterator<Item = (i64, Vec<u8>)> + '_ {
    seqs.chunks(BLOCK_SEQS).map(encode)
}

/// Appends a block's `seq`s, ascending, to `out`.
///
/// # Errors
/// [`StoreError::Other`] if the bytes are not a sequence of varints of positive differences:
/// the file was damaged, and no answer read through it could be trusted.
pub(super) fn decode_into(first: i64, bytes: &[u8], out: &mut Vec<i64>) -> Result<(), StoreError> {
    out.push(first);
    let (mut seq, mut rest) = (first, bytes);
    while !rest.is_empty() {
        match u64::decode_var(rest) {
            Some((delta, read)) if delta > 0 && delta <= i64::MAX as u64 => {
                seq = seq.checked_add(delta as i64).ok_or_else(damaged)?;
                out.push(seq);
                rest = &rest[read..];
            }
            _ => return Err(damaged()),
        }
    }
    Ok(())
}

/// A block's `seq`s, ascending.
pub(super) fn decode(first: i64, bytes: &[u8]) -> Result<Vec<i64>, StoreError> {
    let mut seqs = Vec::with_capacity(bytes.len() + 1);
    decode_into(first, bytes, &mut seqs)?;
    Ok(seqs)
}

/// Column `index` of `row` as a blob, borrowed.
pub(super) fn blob<'r>(row: &'r Row<'_>, index: usize) -> Result<&'r [u8], StoreError> {
    row.get_ref(index)?.as_blob().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Blob, Box::new(error)).into()
    })
}

fn damaged() -> StoreError {
    StoreError::Other(anyhow::anyhow!(
        "a posting list in the database does not decode: the file is damaged"
    ))
}

/// Blocks read per statement while a query walks a list (the `LIMIT` of [`DESCENDING_READ`]
/// and [`ASCENDING_READ`]).
const BLOCKS_PER_READ: usize = 8;

// The limits are written into the statements: SQLite prepares a statement whose `LIMIT` is a
// bound parameter again at every execution (its planner weighs the limit's value).

/// A run's blocks of a key (`?1` run, `?2` field, `?3` value) from `first_seq < ?4` down, at
/// most [`BLOCKS_PER_READ`] of them.
pub(super) const DESCENDING_READ: &str = "SELECT first_seq, seqs FROM posting_lists \
     WHERE run = ?1 AND field = ?2 AND value = ?3 AND first_seq < ?4 \
     ORDER BY first_seq DESC LIMIT 8";

/// The same from `first_seq > ?4` up.
const ASCENDING_READ: &str = "SELECT first_seq, seqs FROM posting_lists \
     WHERE run = ?1 AND field = ?2 AND value = ?3 AND first_seq > ?4 \
     ORDER BY first_seq ASC LIMIT 8";

/// The block that holds `?4` if any: the last to start at or before it.
const HOLDING_READ: &str = "SELECT first_seq, seqs FROM posting_lists \
     WHERE run = ?1 AND field = ?2 AND value = ?3 AND first_seq <= ?4 \
     ORDER BY first_seq DESC LIMIT 1";

/// One key's `seq`s in one run within `(low, high]`, walked in a query's order and read a few
/// blocks at a time, so a frequent key costs what the page needs, not the whole list.
pub(super) struct ListReader<'k> {
    run: i64,
    key: &'k PostingKey,
    order: Order,
    low: i64,
    high: i64,
    /// Read but not yet passed, in the walk's order.
    ahead: VecDeque<i64>,
    /// Where the next read starts: ascending, blocks with `first_seq` above it (and, before the
    /// first read or after a seek, the block that holds it); descending, blocks below it.
    resume: i64,
    /// Whether the next ascending read must first take the block holding `resume`.
    straddle: bool,
    exhausted: bool,
}

impl<'k> ListReader<'k> {
    pub fn new(run: i64, key: &'k PostingKey, order: Order, low: i64, high: i64) -> Self {
        let resume = match order {
            Order::Asc => low,
            Order::Desc => high.saturating_add(1),
        };
        Self {
            run,
            key,
            order,
            low,
            high,
            ahead: VecDeque::new(),
            resume,
            straddle: true,
            exhausted: low >= high,
        }
    }

    fn passed(&self, seq: i64, target: i64) -> bool {
        match self.order {
            Order::Asc => seq < target,
            Order::Desc => seq > target,
        }
    }

    /// The first `seq` at or after `target` in the walk's order, without passing it; `None`
    /// once the list has none left within the bounds. `target` never goes back.
    pub fn seek(&mut self, conn: &Connection, target: i64) -> Result<Option<i64>, StoreError> {
        loop {
            while self
                .ahead
                .front()
                .is_some_and(|&seq| self.passed(seq, target))
            {
                self.ahead.pop_front();
            }
            if let Some(&seq) = self.ahead.front() {
                return Ok(Some(seq));
            }
            if self.exhausted {
                return Ok(None);
            }
            // Nothing read reaches `target`: the next read starts from its block.
            match self.order {
                Order::Asc if target - 1 > self.resume => {
                    self.resume = target - 1;
                    self.straddle = true;
                }
                Order::Desc if target + 1 < self.resume => self.resume = target + 1,
                _ => {}
            }
            self.read(conn)?;
        }
    }

    fn read(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let (run, key) = (self.run, self.key);
        let (field, value): (&str, &PostingValue) = (&key.0, &key.1);
        let mut rows: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut collect = |sql: &str, bound: i64| -> Result<usize, StoreError> {
            let mut select = conn.prepare_cached(sql)?;
            let mut found = select.query(params![run, field, value, bound])?;
            let mut n = 0;
            while let Some(row) = found.next()? {
                rows.push((row.get(0)?, row.get(1)?));
                n += 1;
            }
            Ok(n)
        };
        let full = match self.order {
            Order::Asc => {
                if self.straddle {
                    collect(HOLDING_READ, self.resume)?;
                    self.straddle = false;
                }
                collect(ASCENDING_READ, self.resume)? == BLOCKS_PER_READ
            }
            Order::Desc => collect(DESCENDING_READ, self.resume)? == BLOCKS_PER_READ,
        };
        let mut seqs = Vec::new();
        for (first, bytes) in &rows {
            seqs.clear();
            decode_into(*first, bytes, &mut seqs)?;
            let within = seqs.iter().filter(|&&s| s > self.low && s <= self.high);
            match self.order {
                Order::Asc => self.ahead.extend(within),
                Order::Desc => self.ahead.extend(within.rev()),
            }
        }
        match (self.order, rows.last()) {
            (Order::Asc, Some(&(first, _))) => {
                self.resume = self.resume.max(first);
                self.exhausted = !full || first > self.high;
            }
            (Order::Desc, Some(&(first, _))) => {
                self.resume = first;
                self.exhausted = !full || first <= self.low;
            }
            (_, None) => self.exhausted = true,
        }
        Ok(())
    }
}

/// The `seq`s of a run that hold every key, within `(low, high]`, in `order`, passed to `found`
/// until it returns false; false then, true if the run had no more. `keys` drive in their
/// order: the first is read block by block, the others are sought where it leads (a leapfrog
/// join of sorted lists).
pub(super) fn intersect(
    conn: &Connection,
    run: i64,
    keys: &[PostingKey],
    order: Order,
    (low, high): (i64, i64),
    mut found: impl FnMut(i64) -> Result<bool, StoreError>,
) -> Result<bool, StoreError> {
    let mut readers: Vec<ListReader> = keys
        .iter()
        .map(|key| ListReader::new(run, key, order, low, high))
        .collect();
    if readers.is_empty() {
        return Ok(true);
    }
    let mut target = match order {
        Order::Asc => low + 1,
        Order::Desc => high,
    };
    'walk: loop {
        let Some(candidate) = readers[0].seek(conn, target)? else {
            return Ok(true);
        };
        for reader in &mut readers[1..] {
            match reader.seek(conn, candidate)? {
                None => return Ok(true),
                Some(seq) if seq == candidate => {}
                Some(seq) => {
                    target = seq;
                    continue 'walk;
                }
            }
        }
        if !found(candidate)? {
            return Ok(false);
        }
        target = match order {
            Order::Asc => candidate + 1,
            Order::Desc => candidate - 1,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_cut_at_the_block_size() {
        let seqs: Vec<i64> = (0..300).map(|i| 5 + i * i).collect();
        let blocks: Vec<(i64, Vec<u8>)> = blocks(&seqs).collect();
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[1].0, seqs[BLOCK_SEQS]);
        let mut back = Vec::new();
        for (first, bytes) in &blocks {
            decode_into(*first, bytes, &mut back).unwrap();
        }
        assert_eq!(back, seqs);
        assert_eq!(encode(&[42]), (42, Vec::new()));
        assert_eq!(encode(&[1, 2, 3]).1, vec![1, 1]);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_an_answer() {
        assert!(decode(1, &[0x80]).is_err(), "a varint cut short");
        assert!(decode(1, &[0]).is_err(), "a difference of zero");
        assert!(decode(i64::MAX, &[1]).is_err(), "past the largest seq");
    }

    fn store(seqs: &[i64]) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE posting_lists (run INTEGER NOT NULL, field TEXT NOT NULL, \
             value ANY NOT NULL, first_seq INTEGER NOT NULL, seqs BLOB NOT NULL, \
             PRIMARY KEY (run, field, value, first_seq)) STRICT, WITHOUT ROWID",
        )
        .unwrap();
        for (first, bytes) in blocks(seqs) {
            conn.execute(
                "INSERT INTO posting_lists VALUES (1, 'f', 'v', ?, ?)",
                params![first, bytes],
            )
            .unwrap();
        }
        conn
    }

    fn key() -> PostingKey {
        ("f".into(), PostingValue::Text("v".into()))
    }

    /// A statement prepared again at each execution costs more than the read (and SQLite's
    /// allocator takes a lock that the readers then wait for).
    #[test]
    fn the_reads_are_prepared_once() {
        let conn = store(&(1..1000).collect::<Vec<_>>());
        for sql in [DESCENDING_READ, ASCENDING_READ, HOLDING_READ] {
            let mut select = conn.prepare(sql).unwrap();
            for bound in [10, 500, 900] {
                let mut rows = select.query(params![1, "f", "v", bound]).unwrap();
                while rows.next().unwrap().is_some() {}
            }
            assert_eq!(
                select.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
        assert!(DESCENDING_READ.ends_with(&format!("LIMIT {BLOCKS_PER_READ}")));
        assert!(ASCENDING_READ.ends_with(&format!("LIMIT {BLOCKS_PER_READ}")));
    }

    #[test]
    fn a_reader_walks_a_list_within_its_bounds_in_either_order() {
        let seqs: Vec<i64> = (1..=2000).filter(|i| i % 3 != 0).collect();
        let conn = store(&seqs);
        let key = key();
        for (low, high) in [(0, 3000), (10, 1500), (999, 1001), (500, 500), (2000, 3000)] {
            let expected: Vec<i64> = seqs
                .iter()
                .copied()
                .filter(|&s| s > low && s <= high)
                .collect();
            for order in [Order::Asc, Order::Desc] {
                let mut got = Vec::new();
                intersect(
                    &conn,
                    1,
                    std::slice::from_ref(&key),
                    order,
                    (low, high),
                    |s| {
                        got.push(s);
                        Ok(true)
                    },
                )
                .unwrap();
                if order == Order::Desc {
                    got.reverse();
                }
                assert_eq!(got, expected, "({low}, {high}] {order:?}");
            }
        }
        // Seeking jumps over blocks, forward and backward.
        let mut reader = ListReader::new(1, &key, Order::Asc, 0, 3000);
        assert_eq!(reader.seek(&conn, 1).unwrap(), Some(1));
        assert_eq!(reader.seek(&conn, 1500).unwrap(), Some(1501));
        assert_eq!(reader.seek(&conn, 1998).unwrap(), Some(1999));
        assert_eq!(reader.seek(&conn, 2001).unwrap(), None);
        let mut reader = ListReader::new(1, &key, Order::Desc, 0, 3000);
        assert_eq!(reader.seek(&conn, 3000).unwrap(), Some(2000));
        assert_eq!(reader.seek(&conn, 600).unwrap(), Some(599));
        assert_eq!(reader.seek(&conn, 3).unwrap(), Some(2));
        assert_eq!(reader.seek(&conn, 0).unwrap(), None);
    }
}
