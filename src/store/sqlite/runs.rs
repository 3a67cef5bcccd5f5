//! Runs of postings in the database (migration 0009): how the [`Tail`] is flushed, how runs
//! are merged, and how a query reads them.
//!
//! A run covers one contiguous range of a tenant's `seq`s, `[first_seq, last_seq]` in
//! `posting_runs`, and holds every posting of those events in `postings`, keyed
//! `(run, field, value, seq)`: a flush appends one run per tenant after the others, in key
//! order, so it writes whole pages in order. Runs are merged like the tiers of an LSM tree:
//! once `fanout` adjacent runs are of one tier (sizes within a factor of `fanout`), a merge
//! builds one run from them in chunks, each a short transaction on the writer thread between
//! appends (`building`), then switches it in and the old ones out in one transaction
//! (`live` / `retired`), and deletes the old postings in chunks too. A query reads `live` runs
//! only, so every state in between answers the same, and a restart resumes where it stopped.

use std::collections::HashMap;
use std::sync::{LazyLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, Transaction, params, params_from_iter};

use super::lists;
use super::postings::{Flushing, PostingKey, PostingValue, SortedPostings, Tail};
use super::{EVENT_COLUMNS, Sql, events_of, push_conditions, select_after};
use crate::model::{Event, EventQuery, Order, Seq, TenantId};
use crate::store::StoreError;

/// How postings are batched and merged.
#[derive(Debug, Clone, Copy)]
pub struct PostingOptions {
    /// Events held in memory before their postings are flushed as a run: about 1 KiB of memory
    /// per event, and one run per tenant per flush.
    pub run_events: i64,
    /// How many runs of one tier are merged into one of the next; a query reads at most
    /// `fanout - 1` runs per tier.
    pub fanout: usize,
    /// Postings written, copied or deleted per transaction of a flush or a merge (about ten
    /// milliseconds' work on the writer thread between appends).
    pub chunk_rows: i64,
}

impl Default for PostingOptions {
    fn default() -> Self {
        Self {
            run_events: 16_384,
            fanout: 32,
            chunk_rows: 8_192,
        }
    }
}

impl PostingOptions {
    /// A run's tier: 0 below `run_events × fanout` events, then one more per factor of `fanout`.
    fn tier(&self, events: i64) -> u32 {
        let mut tier = 0;
        let mut bound = self.run_events.saturating_mul(self.fanout as i64);
        while events >= bound {
            tier += 1;
            bound = bound.saturating_mul(self.fanout as i64);
        }
        tier
    }
}

pub(super) fn read(tail: &RwLock<Tail>) -> RwLockReadGuard<'_, Tail> {
    tail.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write(tail: &RwLock<Tail>) -> RwLockWriteGuard<'_, Tail> {
    tail.write().unwrap_or_else(PoisonError::into_inner)
}

/// Rebuilds the tail from the events after each tenant's last run, once per process.
pub(super) fn load_tail(conn: &Connection, tail: &RwLock<Tail>) -> Result<(), StoreError> {
    if read(tail).loaded {
        return Ok(());
    }
    let mut flushed: HashMap<String, i64> = HashMap::new();
    {
        let mut select = conn.prepare(
            "SELECT tenant, max(last_seq) FROM posting_runs WHERE state = 'live' GROUP BY tenant",
        )?;
        let mut rows = select.query([])?;
        while let Some(row) = rows.next()? {
            flushed.insert(row.get(0)?, row.get(1)?);
        }
    }
    let heads: Vec<(String, i64)> = conn
        .prepare("SELECT tenant, seq FROM chain_heads")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    // A flush a stop interrupted: its postings are deleted like a replaced run's, and the
    // tail is rebuilt from `events` below.
    conn.execute(
        "UPDATE posting_runs SET state = 'retired' WHERE state = 'flushing'",
        [],
    )?;
    let mut fresh = Tail::default();
    let mut after_flush = conn.prepare_cached(&select_after(1000))?;
    for (tenant, head) in heads {
        let tenant = TenantId::new(tenant);
        let mut after = flushed.get(tenant.as_str()).copied().unwrap_or(0);
        fresh.start(tenant.clone(), after);
        while after < head {
            let events = events_of(after_flush.query(params![tenant.as_str(), after])?)?;
            let Some(last) = events.last() else { break };
            after = last.seq.0;
            fresh.add(&events);
        }
    }
    fresh.loaded = true;
    *write(tail) = fresh;
    Ok(())
}

/// Starts a flush of every tenant's tail, unless one is under way: creates a `flushing` run
/// per tenant and freezes the postings it will hold, sorted by key, which the chunks of
/// [`flush_chunk`] then write. The tail keeps answering for them until the run is live.
fn freeze(conn: &mut Connection, tail: &RwLock<Tail>) -> Result<bool, StoreError> {
    // Only the writer thread changes the tail, and this runs on it: what is read here is what
    // is frozen below. The copy is sorted outside the lock, so queries do not wait for it.
    let mut pending: Vec<(TenantId, i64, i64, SortedPostings)> = {
        let guard = read(tail);
        if guard.tenants().any(|(_, t)| t.flushing.is_some()) {
            return Ok(false);
        }
        guard
            .tenants()
            .filter(|(_, t)| t.unfrozen() > 0)
            .map(|(tenant, t)| {
                let postings = t.postings.iter().map(|(k, v)| (k.clone(), v.clone()));
                (
                    tenant.clone(),
                    t.frozen_last + 1,
                    t.last,
                    postings.collect(),
                )
            })
            .collect()
    };
    if pending.is_empty() {
        return Ok(false);
    }
    let tx = conn.transaction()?;
    let mut runs = Vec::new();
    {
        let mut new_run = tx.prepare_cached(
            "INSERT INTO posting_runs (tenant, first_seq, last_seq, state) \
             VALUES (?, ?, ?, 'flushing') RETURNING id",
        )?;
        for (tenant, first, last, postings) in &mut pending {
            postings.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            runs.push(
                new_run.query_row(params![tenant.as_str(), *first, *last], |row| {
                    row.get::<_, i64>(0)
                })?,
            );
        }
    }
    tx.commit()?;
    let mut emptied = Vec::new();
    {
        let mut guard = write(tail);
        for ((tenant, _, _, postings), run) in pending.into_iter().zip(runs) {
            if let Some(t) = guard.tenant_mut(&tenant) {
                emptied.push(std::mem::take(&mut t.postings));
                t.freeze(run, postings);
            }
        }
    }
    drop(emptied);
    Ok(true)
}

/// Blocks inserted by one execution of [`INSERT_MANY`].
const ROWS_PER_INSERT: usize = 64;

static INSERT_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO posting_lists (run, field, value, first_seq, seqs) VALUES {}",
        vec!["(?, ?, ?, ?, ?)"; ROWS_PER_INSERT].join(", ")
    )
});

/// Writes each key's `seq`s (ascending) into `run` as blocks ([`lists::blocks`]), keys in order.
fn insert_lists<F: ToSql + Copy, V: ToSql + Copy>(
    tx: &Transaction,
    run: i64,
    keys: &[(F, V, &[i64])],
) -> Result<(), StoreError> {
    let rows: Vec<(F, V, i64, Vec<u8>)> = keys
        .iter()
        .flat_map(|&(field, value, seqs)| {
            lists::blocks(seqs).map(move |(first, bytes)| (field, value, first, bytes))
        })
        .collect();
    // A statement per many rows: a row then costs SQLite's insert alone, about half of what a
    // statement per row did.
    let mut many = tx.prepare_cached(&INSERT_MANY)?;
    let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
    for chunk in &mut chunks {
        let binds = chunk.iter().flat_map(|(field, value, first, bytes)| {
            [&run as &dyn ToSql, field, value, first, bytes]
        });
        many.execute(params_from_iter(binds))?;
    }
    let mut one = tx.prepare_cached(
        "INSERT INTO posting_lists (run, field, value, first_seq, seqs) VALUES (?, ?, ?, ?, ?)",
    )?;
    for (field, value, first, bytes) in chunks.remainder() {
        one.execute(params![run, field, value, first, bytes])?;
    }
    Ok(())
}

/// Writes the next chunk (about `rows` postings, whole keys) of a flush under way; the last
/// one makes the run live and empties the frozen part of the tail. False when no flush is
/// under way.
fn flush_chunk(
    conn: &mut Connection,
    tail: &RwLock<Tail>,
    rows: usize,
) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let (tenant, run, written, complete) = {
        let guard = read(tail);
        let Some((tenant, t)) = guard.tenants().find(|(_, t)| t.flushing.is_some()) else {
            return Ok(false);
        };
        let run = t.flushing.as_ref().map_or(0, |f| f.run);
        let chunk = t.unwritten(rows);
        let keys: Vec<(&str, &PostingValue, &[i64])> = chunk
            .iter()
            .map(|((field, value), seqs)| (&**field, value, seqs.as_slice()))
            .collect();
        insert_lists(&tx, run, &keys)?;
        let written = chunk.last().map(|(key, _)| key.clone());
        let complete = match &written {
            None => true,
            Some(key) => t.frozen.last().is_some_and(|(last, _)| last == key),
        };
        if complete {
            tx.prepare_cached("UPDATE posting_runs SET state = 'live' WHERE id = ?")?
                .execute([run])?;
        }
        (tenant.clone(), run, written, complete)
    };
    tx.commit()?;
    let mut guard = write(tail);
    let Some(t) = guard.tenant_mut(&tenant) else {
        return Ok(true);
    };
    if complete {
        let frozen = std::mem::take(&mut t.frozen);
        t.flushed = t.frozen_last;
        t.flushing = None;
        drop(guard);
        drop(frozen);
    } else {
        t.flushing = Some(Flushing { run, written });
    }
    Ok(true)
}

/// Flushes every tenant's whole tail and then runs the upkeep to its end.
pub(super) fn flush_all(
    conn: &mut Connection,
    tail: &RwLock<Tail>,
    options: &PostingOptions,
) -> Result<(), StoreError> {
    load_tail(conn, tail)?;
    loop {
        while flush_chunk(conn, tail, options.chunk_rows as usize)? {}
        if !freeze(conn, tail)? {
            break;
        }
    }
    while maintain(conn, tail, options)?.is_some() {}
    Ok(())
}

/// One bounded step of the postings' upkeep on the writer's connection: a chunk of a flush under
/// way, the start of a flush when the tail is full, else a chunk of deleting a retired run, of
/// building a merged run, or the plan of the next merge. `None` when there was nothing to do.
///
/// When the merges are behind (a tenant has more than twice `fanout` live runs, as under a
/// sustained load, where a step waits in the writer's queue behind the appends), it goes on
/// with further steps for up to [`CATCH_UP_BUDGET`] in the same job, and says so, so that the
/// caller does not pause after it: a query reads every live run, and a 10M-event load had left
/// 533 runs where the tiers allow about 60.
pub(super) fn maintain(
    conn: &mut Connection,
    tail: &RwLock<Tail>,
    options: &PostingOptions,
) -> Result<Option<Upkeep>, StoreError> {
    load_tail(conn, tail)?;
    let started = std::time::Instant::now();
    let Some((first, deferrable)) = step(conn, tail, options)? else {
        return Ok(None);
    };
    let behind = behind(conn, options)?;
    let mut steps = 1;
    if behind {
        while started.elapsed() < CATCH_UP_BUDGET && step(conn, tail, options)?.is_some() {
            steps += 1;
        }
    }
    let elapsed = started.elapsed();
    tracing::debug!(
        step = first,
        steps,
        behind,
        elapsed_us = elapsed.as_micros() as u64,
        "postings upkeep"
    );
    Ok(Some(Upkeep {
        elapsed,
        deferrable: deferrable && !behind,
    }))
}

/// The writer's time one upkeep job may take while the merges are behind: about as long as
/// a few batches of appends, which wait for it.
const CATCH_UP_BUDGET: std::time::Duration = std::time::Duration::from_millis(40);

/// Does one step of the upkeep; its name and whether it could have waited.
fn step(
    conn: &mut Connection,
    tail: &RwLock<Tail>,
    options: &PostingOptions,
) -> Result<Option<(&'static str, bool)>, StoreError> {
    Ok(Some(
        if flush_chunk(conn, tail, options.chunk_rows as usize)? {
            ("flush", false)
        } else if read(tail).unfrozen() >= options.run_events && freeze(conn, tail)? {
            ("freeze", false)
        } else if delete_retired(conn, options)? {
            ("delete", true)
        } else if merge(conn, options)? {
            ("merge", true)
        } else if plan_merge(conn, options)? {
            ("plan", true)
        } else {
            return Ok(None);
        },
    ))
}

/// Whether some tenant has more than twice `fanout` live runs: more than its tiers hold once
/// merged (at most `fanout - 1` per tier, and a few tiers).
fn behind(conn: &Connection, options: &PostingOptions) -> Result<bool, StoreError> {
    let most: Option<i64> = conn
        .prepare_cached(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM posting_runs \
             WHERE state = 'live' GROUP BY tenant)",
        )?
        .query_row([], |row| row.get(0))?;
    Ok(most.unwrap_or(0) > 2 * options.fanout as i64)
}

/// A job of the upkeep that was done.
pub(super) struct Upkeep {
    /// The writer's time it took.
    pub elapsed: std::time::Duration,
    /// Whether the caller may pause as long before the next: a merge's or a deletion's, while
    /// the merges keep up (a flush bounds the tail's memory, and may not wait).
    pub deferrable: bool,
}

/// Deletes a chunk of a retired run's blocks, and the run once they are gone.
fn delete_retired(conn: &mut Connection, options: &PostingOptions) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let run: Option<i64> = tx
        .query_row(
            "SELECT id FROM posting_runs WHERE state = 'retired' LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let Some(run) = run else { return Ok(false) };
    let bound: Option<(String, SqlValue, i64)> = tx
        .prepare_cached(&format!(
            "SELECT field, value, first_seq FROM posting_lists WHERE run = ? \
             ORDER BY field, value, first_seq LIMIT 1 OFFSET {}",
            options.chunk_rows - 1
        ))?
        .query_row(params![run], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    match bound {
        Some((field, value, first)) => {
            tx.prepare_cached(
                "DELETE FROM posting_lists WHERE run = ?1 \
                 AND (field, value, first_seq) <= (?2, ?3, ?4)",
            )?
            .execute(params![run, field, value, first])?;
        }
        None => {
            tx.prepare_cached("DELETE FROM posting_lists WHERE run = ?")?
                .execute([run])?;
            tx.prepare_cached("DELETE FROM posting_runs WHERE id = ?")?
                .execute([run])?;
        }
    }
    tx.commit()?;
    Ok(true)
}

/// Builds the next chunk of the run being merged: about `chunk_rows` blocks of the runs it
/// replaces, whole keys, read in key order, each key's `seq`s joined and cut into blocks again.
/// The last chunk also switches the merged run in and the runs it replaces out.
fn merge(conn: &mut Connection, options: &PostingOptions) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let building: Option<(i64, String, i64, i64)> = tx
        .query_row(
            "SELECT id, tenant, first_seq, last_seq FROM posting_runs \
             WHERE state = 'building' LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .optional()?;
    let Some((merged, tenant, first, last)) = building else {
        return Ok(false);
    };
    let sources: Vec<i64> = tx
        .prepare_cached(
            "SELECT id FROM posting_runs WHERE tenant = ? AND state = 'live' \
             AND first_seq >= ? AND last_seq <= ? ORDER BY first_seq",
        )?
        .query_map(params![tenant, first, last], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let resume: Option<(String, SqlValue)> = tx
        .prepare_cached(
            "SELECT field, value FROM posting_lists WHERE run = ? \
             ORDER BY field DESC, value DESC LIMIT 1",
        )?
        .query_row([merged], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let sql = merge_sql(sources.len(), resume.is_some());
    let (field, value) = resume.unwrap_or((String::new(), SqlValue::Null));
    let mut binds: Vec<SqlValue> = vec![field.into(), value];
    binds.extend(sources.iter().map(|&run| SqlValue::from(run)));
    let mut keys: Vec<(String, SqlValue, Vec<i64>)> = Vec::new();
    let mut complete = true;
    {
        let mut select = tx.prepare_cached(&sql)?;
        let mut rows = select.query(params_from_iter(binds))?;
        let mut read = 0;
        while let Some(row) = rows.next()? {
            let (field, value) = (row.get_ref(0)?, row.get_ref(1)?);
            let same = keys.last().is_some_and(|(f, v, _)| {
                ValueRef::from(f.as_str()) == field && ValueRef::from(v) == value
            });
            if !same {
                if read >= options.chunk_rows {
                    complete = false;
                    break;
                }
                keys.push((row.get(0)?, row.get(1)?, Vec::new()));
            }
            if let Some((_, _, seqs)) = keys.last_mut() {
                // The runs cover ascending ranges of `seq`s and are read in that order.
                lists::decode_into(row.get(2)?, lists::blob(row, 3)?, seqs)?;
            }
            read += 1;
        }
    }
    let lists: Vec<(&String, &SqlValue, &[i64])> = keys
        .iter()
        .map(|(field, value, seqs)| (field, value, seqs.as_slice()))
        .collect();
    insert_lists(&tx, merged, &lists)?;
    if complete {
        tx.prepare_cached("UPDATE posting_runs SET state = 'live' WHERE id = ?")?
            .execute([merged])?;
        let mut retire =
            tx.prepare_cached("UPDATE posting_runs SET state = 'retired' WHERE id = ?")?;
        for run in &sources {
            retire.execute([run])?;
        }
    }
    tx.commit()?;
    Ok(true)
}

/// The statement reading `sources` runs' blocks in key order for a merge: `?1`, `?2` the key
/// to resume after if `resume`, `?3`… the runs. One arm per run, each read in key order by the
/// primary key; SQLite merges the arms of a compound SELECT with ORDER BY rather than sorting
/// them, and the merge stops reading where it stops stepping.
fn merge_sql(sources: usize, resume: bool) -> String {
    let after = if resume {
        " AND (field, value) > (?1, ?2)"
    } else {
        ""
    };
    let arms: Vec<String> = (0..sources)
        .map(|i| {
            format!(
                "SELECT field, value, first_seq, seqs FROM posting_lists WHERE run = ?{}{after}",
                i + 3
            )
        })
        .collect();
    format!("{} ORDER BY 1, 2, 3", arms.join(" UNION ALL "))
}

/// Starts a merge of the oldest `fanout` adjacent live runs of one tier, if a tenant has them.
fn plan_merge(conn: &mut Connection, options: &PostingOptions) -> Result<bool, StoreError> {
    let tx = conn.transaction()?;
    let runs: Vec<(String, i64, i64)> = tx
        .prepare_cached(
            "SELECT tenant, first_seq, last_seq FROM posting_runs WHERE state = 'live' \
             ORDER BY tenant, first_seq",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let window = runs
        .windows(options.fanout.max(2))
        .find(|window| {
            let (tenant, first, last) = &window[0];
            let tier = options.tier(last - first + 1);
            window
                .iter()
                .all(|(t, first, last)| t == tenant && options.tier(last - first + 1) == tier)
        })
        .map(|window| {
            let tenant = window[0].0.clone();
            (tenant, window[0].1, window[window.len() - 1].2)
        });
    let Some((tenant, first, last)) = window else {
        return Ok(false);
    };
    tx.prepare_cached(
        "INSERT INTO posting_runs (tenant, first_seq, last_seq, state) \
         VALUES (?, ?, ?, 'building')",
    )?
    .execute(params![tenant, first, last])?;
    tx.commit()?;
    Ok(true)
}

/// Deletes an event's postings from whichever runs hold its `seq` (live, building or retired),
/// in the redaction's transaction: each block that holds it is written again without it.
pub(super) fn erase(
    tx: &Transaction,
    tenant: &TenantId,
    seq: Seq,
    keys: &[PostingKey],
) -> Result<(), StoreError> {
    let runs: Vec<i64> = tx
        .prepare_cached(
            "SELECT id FROM posting_runs WHERE tenant = ?1 AND first_seq <= ?2 AND last_seq >= ?2",
        )?
        .query_map(params![tenant.as_str(), seq.0], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut block = tx.prepare_cached(
        "SELECT first_seq, seqs FROM posting_lists WHERE run = ?1 AND field = ?2 AND value = ?3 \
         AND first_seq <= ?4 ORDER BY first_seq DESC LIMIT 1",
    )?;
    let mut delete = tx.prepare_cached(
        "DELETE FROM posting_lists WHERE run = ?1 AND field = ?2 AND value = ?3 AND first_seq = ?4",
    )?;
    for run in runs {
        for (field, value) in keys {
            let found: Option<(i64, Vec<u8>)> = block
                .query_row(params![run, &**field, value, seq.0], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            let Some((first, bytes)) = found else {
                continue;
            };
            let mut seqs = lists::decode(first, &bytes)?;
            let Ok(at) = seqs.binary_search(&seq.0) else {
                continue;
            };
            seqs.remove(at);
            delete.execute(params![run, &**field, value, first])?;
            insert_lists(tx, run, &[(&**field, value, seqs.as_slice())])?;
        }
    }
    Ok(())
}

/// The statement that reads an event a query's postings name, and checks it against every
/// filter of the query (the postings are a superset: e.g. `1` and `1.0` share a posting).
pub(super) struct EventCheck(Sql);

impl EventCheck {
    pub fn new(query: &EventQuery) -> Result<Self, StoreError> {
        let mut sql = Sql::default();
        sql.push(&format!(
            "SELECT {} FROM events WHERE key = {}",
            *EVENT_COLUMNS,
            super::key_of("?1", "?2")
        ));
        push_conditions(&mut sql, query)?;
        Ok(Self(sql))
    }

    /// The event at `seq` if it matches.
    fn read(
        &self,
        conn: &Connection,
        tenant: &TenantId,
        seq: i64,
    ) -> Result<Option<Event>, StoreError> {
        let mut select = conn.prepare_cached(&self.0.text)?;
        let head = [
            SqlValue::from(tenant.as_str().to_owned()),
            SqlValue::Integer(seq),
        ];
        let mut rows = select.query(params_from_iter(head.iter().chain(&self.0.binds)))?;
        rows.next()?.map(super::event_from_row).transpose()
    }
}

/// The statements a query that postings serve runs, with values, for `EXPLAIN`: the read of a
/// key's blocks in a run, and the read of an event.
pub(super) fn explain(
    tenant: &TenantId,
    query: &EventQuery,
    keys: &[PostingKey],
) -> Result<Vec<(String, Vec<SqlValue>)>, StoreError> {
    let mut statements = Vec::new();
    if let Some((field, value)) = keys.first() {
        statements.push((
            lists::DESCENDING_READ.to_owned(),
            vec![
                SqlValue::Integer(1),
                SqlValue::from(field.to_string()),
                SqlValue::from(value),
                SqlValue::Integer(i64::MAX),
            ],
        ));
    }
    let check = EventCheck::new(query)?.0;
    let mut binds = vec![
        SqlValue::from(tenant.as_str().to_owned()),
        SqlValue::Integer(1),
    ];
    binds.extend(check.binds);
    statements.push((check.text, binds));
    Ok(statements)
}

/// A page of a query that postings serve: the tail's candidates, then the live runs up to
/// where the tail starts, in the query's order, all read in one snapshot of the database taken
/// after the tail's (so every event the tail names is committed in it).
pub(super) fn query(
    conn: &Connection,
    tail: &RwLock<Tail>,
    tenant: &TenantId,
    query: &EventQuery,
    mut keys: Vec<PostingKey>,
) -> Result<Vec<Event>, StoreError> {
    let matches = read(tail).matches(tenant, &mut keys);
    let check = EventCheck::new(query)?;
    let limit = usize::try_from(query.fetch_limit()).unwrap_or(usize::MAX);
    // One snapshot for every statement; inside the writer's transaction (an erasure's targets)
    // that is the transaction's own.
    let own = conn
        .is_autocommit()
        .then(|| conn.unchecked_transaction())
        .transpose()?;
    let snapshot: &Connection = own.as_deref().unwrap_or(conn);
    let runs: Vec<(i64, i64, i64)> = snapshot
        .prepare_cached(
            "SELECT id, first_seq, last_seq FROM posting_runs \
             WHERE tenant = ? AND state = 'live' AND first_seq <= ? ORDER BY first_seq",
        )?
        .query_map(params![tenant.as_str(), matches.flushed], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut found = Vec::new();
    let mut take = |seq: i64| -> Result<bool, StoreError> {
        if let Some(event) = check.read(snapshot, tenant, seq)? {
            found.push(event);
        }
        Ok(found.len() < limit)
    };
    match query.order {
        Order::Asc => {
            let after = query.after.map_or(0, |seq| seq.0);
            let mut open = true;
            for &(run, first, last) in &runs {
                let bounds = (after.max(first - 1), last.min(matches.flushed));
                if open && bounds.0 < bounds.1 {
                    open = lists::intersect(snapshot, run, &keys, Order::Asc, bounds, &mut take)?;
                }
            }
            for &seq in matches.seqs.iter().filter(|&&seq| seq > after) {
                if !open {
                    break;
                }
                open = take(seq)?;
            }
        }
        Order::Desc => {
            let before = query.after.map_or(i64::MAX, |seq| seq.0);
            let mut open = true;
            for &seq in matches.seqs.iter().rev().filter(|&&seq| seq < before) {
                if !open {
                    break;
                }
                open = take(seq)?;
            }
            for &(run, first, last) in runs.iter().rev() {
                let bounds = (first - 1, last.min(matches.flushed).min(before - 1));
                if open && bounds.0 < bounds.1 {
                    open = lists::intersect(snapshot, run, &keys, Order::Desc, bounds, &mut take)?;
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Limits, NewEvent, RawEvent, Submission};
    use crate::store::assemble::CommitClock;

    const OPTIONS: PostingOptions = PostingOptions {
        run_events: 4,
        fanout: 3,
        chunk_rows: 3,
    };

    fn batch(range: std::ops::Range<i64>) -> Vec<Submission> {
        let events = range
            .map(|i| {
                let raw: RawEvent = serde_json::from_value(serde_json::json!({
                    "event_type": "t", "user_identity": format!("u{}", i % 3),
                    "event_data": {"k": i % 2, "i": i}
                }))
                .unwrap();
                NewEvent::parse_own(raw, &Limits::default()).unwrap()
            })
            .collect();
        vec![Submission::new(TenantId::default(), "tester", events)]
    }

    /// An in-memory database at the latest migration, an empty tail and a commit clock.
    fn migrated() -> (Connection, RwLock<Tail>, CommitClock) {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrate(&mut conn).unwrap();
        (conn, RwLock::new(Tail::default()), CommitClock::default())
    }

    fn parse(pairs: &[(&str, &str)]) -> EventQuery {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        EventQuery::parse(&pairs).unwrap()
    }

    fn seqs(
        conn: &Connection,
        tail: &RwLock<Tail>,
        pairs: &[(&str, &str)],
        order: Order,
    ) -> Vec<i64> {
        let mut query = parse(pairs);
        query.order = order;
        query.limit = 1000;
        let keys = query
            .filters
            .iter()
            .filter_map(super::super::posting_of)
            .collect();
        let found = super::query(conn, tail, &TenantId::default(), &query, keys).unwrap();
        found.iter().map(|event| event.seq.0).collect()
    }

    fn assert_exact(conn: &Connection, tail: &RwLock<Tail>, events: i64) {
        let all = |holds: &dyn Fn(i64) -> bool| -> Vec<i64> {
            (0..events).filter(|&i| holds(i)).map(|i| i + 1).collect()
        };
        for (pairs, expected) in [
            (vec![("user_identity", "u1")], all(&|i| i % 3 == 1)),
            (vec![("event_data.k", "0")], all(&|i| i % 2 == 0)),
            (
                vec![("event_data.k", "1"), ("user_identity", "u2")],
                all(&|i| i % 2 == 1 && i % 3 == 2),
            ),
            (vec![("event_data.i", "7")], all(&|i| i == 7)),
        ] {
            assert_eq!(seqs(conn, tail, &pairs, Order::Asc), expected, "{pairs:?}");
            let mut desc = seqs(conn, tail, &pairs, Order::Desc);
            desc.reverse();
            assert_eq!(desc, expected, "{pairs:?} desc");
        }
    }

    fn states(conn: &Connection) -> Vec<String> {
        conn.prepare("SELECT state FROM posting_runs ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A flush stopped halfway (the process died): its run is never read, the tail rebuilt on
    /// the next start answers for its events, and the upkeep deletes it.
    #[test]
    fn a_flush_a_stop_interrupted_is_discarded_and_rebuilt() {
        let (mut conn, tail, clock) = migrated();
        super::super::append(&mut conn, &clock, &tail, batch(0..10), None).unwrap();
        assert!(freeze(&mut conn, &tail).unwrap());
        assert!(flush_chunk(&mut conn, &tail, 3).unwrap());
        // Appends and queries go on while the flush is under way.
        super::super::append(&mut conn, &clock, &tail, batch(10..12), None).unwrap();
        assert_eq!(states(&conn), vec!["flushing"]);
        assert_exact(&conn, &tail, 12);

        // The next start: a fresh tail over the same database.
        let tail = RwLock::new(Tail::default());
        load_tail(&conn, &tail).unwrap();
        assert_eq!(states(&conn), vec!["retired"]);
        assert_exact(&conn, &tail, 12);
        while maintain(&mut conn, &tail, &OPTIONS).unwrap().is_some() {}
        assert_exact(&conn, &tail, 12);
        flush_all(&mut conn, &tail, &OPTIONS).unwrap();
        assert!(states(&conn).iter().all(|state| state == "live"));
        let left: i64 = conn
            .query_row(
                "SELECT count(*) FROM posting_lists WHERE run = 1",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "the interrupted run's postings are deleted");
        assert_exact(&conn, &tail, 12);
    }

    /// A merge reads each run by its primary key and merges them, never sorting every block.
    #[test]
    fn a_merge_reads_its_runs_in_key_order_without_sorting() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!(
            "../migrations/sqlite/0001_events_and_users.sql"
        ))
        .unwrap();
        let postings = include_str!("../migrations/sqlite/0010_posting_lists.sql");
        let table = &postings[postings.find("CREATE TABLE posting_lists").unwrap()..];
        conn.execute_batch(&table[..table.find(';').unwrap() + 1])
            .unwrap();
        for resume in [false, true] {
            let sql = merge_sql(3, resume);
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> = explain
                .query_map([0; 5], |row| row.get::<_, String>("detail"))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains("MERGE (UNION ALL)"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            let key = if resume {
                "USING PRIMARY KEY (run=? AND (field,value)>(?,?))"
            } else {
                "USING PRIMARY KEY (run=?)"
            };
            assert_eq!(plan.matches(key).count(), 3, "{plan}");
        }
    }

    /// SQLite prepares a statement again at each execution when the planner weighed a bound
    /// value (a `LIMIT ?`, say): a page then cost a parse per statement, and the readers waited
    /// on the lock of SQLite's allocator.
    #[test]
    fn the_statements_of_a_query_are_prepared_once() {
        let (mut conn, tail, clock) = migrated();
        super::super::append(&mut conn, &clock, &tail, batch(0..10), None).unwrap();
        let tenant = TenantId::default();
        let range = parse(&[
            ("since", "2000-01-01T00:00:00Z"),
            ("until", "2100-01-01T00:00:00Z"),
        ]);
        let filtered = parse(&[("user_identity", "u1"), ("event_data.k", "1")]);
        for query in [&range, &filtered] {
            let sql = super::super::build_query("", &tenant, query).unwrap();
            let mut select = conn.prepare(&sql.text).unwrap();
            for _ in 0..3 {
                super::super::events_of(select.query(params_from_iter(&sql.binds)).unwrap())
                    .unwrap();
            }
            assert_eq!(
                select.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{}",
                sql.text
            );
        }
        let check = EventCheck::new(&filtered).unwrap();
        for seq in 1..=5 {
            check.read(&conn, &tenant, seq).unwrap();
        }
        let select = conn.prepare_cached(&check.0.text).unwrap();
        assert_eq!(
            select.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "{}",
            check.0.text
        );
        let mut after = conn.prepare(&select_after(4)).unwrap();
        for seq in 0..3 {
            super::super::events_of(after.query(params![tenant.as_str(), seq]).unwrap()).unwrap();
        }
        assert_eq!(after.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    /// Merges that fell behind catch up: one upkeep job then does several steps (here a whole
    /// merge, where one step would only plan it) and asks for no pause.
    #[test]
    fn merges_that_fell_behind_catch_up_in_one_job() {
        let (mut conn, tail, clock) = migrated();
        // Eight runs of 4 events, flushed without merging: more than twice the fanout (3).
        for run in 0..8 {
            super::super::append(&mut conn, &clock, &tail, batch(run * 4..run * 4 + 4), None)
                .unwrap();
            assert!(freeze(&mut conn, &tail).unwrap());
            while flush_chunk(&mut conn, &tail, 1000).unwrap() {}
        }
        let live = |conn: &Connection| states(conn).iter().filter(|s| *s == "live").count();
        assert_eq!(live(&conn), 8);
        assert!(behind(&conn, &OPTIONS).unwrap());
        let upkeep = maintain(&mut conn, &tail, &OPTIONS).unwrap().unwrap();
        assert!(!upkeep.deferrable, "no pause while behind");
        assert!(
            live(&conn) < 8,
            "a merge was made in one job: {:?}",
            states(&conn)
        );
        while maintain(&mut conn, &tail, &OPTIONS).unwrap().is_some() {}
        assert!(!behind(&conn, &OPTIONS).unwrap());
        assert_exact(&conn, &tail, 32);
    }

    #[test]
    fn tiers_grow_by_the_fanout() {
        let options = PostingOptions {
            run_events: 4,
            fanout: 3,
            chunk_rows: 7,
        };
        let tiers: Vec<u32> = [1, 11, 12, 35, 36, 107, 108]
            .map(|n| options.tier(n))
            .to_vec();
        assert_eq!(tiers, vec![0, 0, 1, 1, 2, 2, 3]);
    }
}
