//! SQLite's postings (migration 0009, `store/sqlite/postings.rs`): the tail in memory, runs
//! flushed from it, and runs merged across tiers answer every filter alike, a redaction
//! reaches every stage, and a reopened store rebuilds its tail. `TestDb::sqlite` opens stores
//! with tiny runs (4 events, merged 3 at a time, 7 postings per chunk), so that a few hundred
//! events go through every stage.

use auditor::model::{EventQuery, Order, Seq, TenantId};
use auditor::store::{SqliteStore, Store};
use serde_json::json;

use crate::helpers::{Backend, POSTINGS_CTE, TestDb, created, redaction, submission};

const EVENTS: i64 = 300;

fn event(i: i64) -> serde_json::Value {
    json!({"event_type": format!("t{}", i % 3), "user_identity": format!("u{}", i % 7),
           "entity_id": format!("id-{i}"),
           "event_data": {"k": i % 5, "half": (i % 4) as f64 / 2.0, "s": format!("x{}", i % 11)}})
}

/// The `seq`s of events `0..count` (seq = i + 1) for which `holds` is true.
fn expected(count: i64, holds: impl Fn(i64) -> bool) -> Vec<i64> {
    (0..count).filter(|&i| holds(i)).map(|i| i + 1).collect()
}

/// Every page of a query in an order, following the cursor; pages of 4 cross runs' bounds.
async fn pages(store: &SqliteStore, pairs: &[(&str, &str)], order: Order) -> Vec<i64> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut query = EventQuery::parse(&pairs).unwrap();
    query.order = order;
    query.limit = 4;
    let mut seqs = Vec::new();
    loop {
        let mut page = store.query(&TenantId::default(), &query).await.unwrap();
        let more = page.len() > 4;
        page.truncate(4);
        seqs.extend(page.iter().map(|event| event.seq.0));
        match page.last() {
            Some(last) if more => query.after = Some(last.seq),
            _ => break,
        }
    }
    if order == Order::Desc {
        seqs.reverse();
    }
    seqs
}

/// Query-string pairs and the `seq`s they match.
type Case = (Vec<(&'static str, &'static str)>, Vec<i64>);

/// Each filter, alone and combined, pages to exactly its matches in both orders.
async fn assert_exact(store: &SqliteStore, count: i64, erased: Option<i64>) {
    let data = |i: i64| Some(i + 1) != erased;
    let cases: Vec<Case> = vec![
        (
            vec![("user_identity", "u3")],
            expected(count, |i| i % 7 == 3),
        ),
        (vec![("event_type", "t1")], expected(count, |i| i % 3 == 1)),
        (vec![("entity_id", "id-42")], expected(count, |i| i == 42)),
        (
            vec![("event_data.k", "2")],
            expected(count, |i| i % 5 == 2 && data(i)),
        ),
        // 1.0 is held as 1.0 by every fourth event and found as 1 too.
        (
            vec![("event_data.half", "1")],
            expected(count, |i| i % 4 == 2 && data(i)),
        ),
        (
            vec![("event_data.half", "0.5")],
            expected(count, |i| i % 4 == 1 && data(i)),
        ),
        (
            vec![("user_identity", "u3"), ("event_data.s", "x4")],
            expected(count, |i| i % 7 == 3 && i % 11 == 4 && data(i)),
        ),
        (
            vec![("event_type", "t2"), ("event_data.k", "0")],
            expected(count, |i| i % 3 == 2 && i % 5 == 0 && data(i)),
        ),
    ];
    for (pairs, expected) in cases {
        for order in [Order::Asc, Order::Desc] {
            assert_eq!(
                pages(store, &pairs, order).await,
                expected,
                "{pairs:?} {order:?}"
            );
        }
    }
}

fn states(db: &TestDb) -> Vec<(String, i64)> {
    db.sqlite_connection()
        .prepare("SELECT state, count(*) FROM posting_runs GROUP BY state ORDER BY state")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn postings_answer_alike_from_the_tail_flushed_runs_and_merged_runs() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.sqlite().await;
    store.migrate().await.unwrap();
    // In batches of 3, so that flushes (every 4 events) and merges interleave with appends,
    // and queries run while the upkeep is under way.
    let mut appended = Vec::new();
    for start in (0..EVENTS).step_by(3) {
        let batch: Vec<_> = (start..(start + 3).min(EVENTS)).map(event).collect();
        let outcome = store
            .append(&[submission("default", json!(batch))])
            .await
            .unwrap();
        appended.extend(created(&outcome[0]).iter().cloned());
        if start % 60 == 0 {
            assert_exact(&store, start + 3, None).await;
        }
    }
    assert_exact(&store, EVENTS, None).await;

    // Settled: every posting in live runs that tile [1, 300] and hold it exactly once, fewer
    // runs than events by far (merged), nothing left building or retired.
    store.flush_postings().await.unwrap();
    let conn = db.sqlite_connection();
    let runs: Vec<(i64, i64)> = conn
        .prepare("SELECT first_seq, last_seq FROM posting_runs ORDER BY first_seq")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(states(&db), vec![("live".to_owned(), runs.len() as i64)]);
    // The test store's runs: 4 events, merged 3 at a time (`TestDb::sqlite`). How many runs
    // are left depends on how the appends fell into flushes; what must hold is that the merges
    // ran (a run of more than a flush) and ran out (no 3 adjacent runs of one tier are left).
    let tier = |&(first, last): &(i64, i64)| {
        let (mut tier, mut bound) = (0, 4 * 3);
        while last - first + 1 >= bound {
            tier += 1;
            bound *= 3;
        }
        tier
    };
    assert!(
        runs.iter().any(|run| tier(run) > 0),
        "runs were merged: {runs:?}"
    );
    assert!(
        runs.windows(3)
            .all(|w| tier(&w[0]) != tier(&w[1]) || tier(&w[1]) != tier(&w[2])),
        "every merge was made: {runs:?}"
    );
    assert_eq!(runs.first().unwrap().0, 1);
    assert_eq!(runs.last().unwrap().1, EVENTS);
    assert!(runs.windows(2).all(|w| w[1].0 == w[0].1 + 1), "{runs:?}");
    let (postings, distinct): (i64, i64) = conn
        .query_row(
            &format!(
                "{POSTINGS_CTE} SELECT count(*), \
                 count(DISTINCT field || ':' || quote(value) || ':' || seq) FROM postings"
            ),
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    // event_type, user_identity, entity_id, recorded_by and three payload leaves.
    assert_eq!((postings, distinct), (EVENTS * 7, EVENTS * 7));
    assert_exact(&store, EVENTS, None).await;

    // A redaction deletes the payload's postings from the run that holds them.
    let target = &appended[41];
    store.append(&[redaction(target)]).await.unwrap();
    let left: i64 = conn
        .query_row(
            &format!(
                "{POSTINGS_CTE} SELECT count(*) FROM postings \
                 WHERE seq = 42 AND field LIKE 'event\\_data.%' ESCAPE '\\'"
            ),
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the erased payload's postings are gone");
    assert_exact(&store, EVENTS, Some(42)).await;

    // A store opened again rebuilds its tail from the events after the last run.
    drop(store);
    let store = db.sqlite().await;
    assert_eq!(store.pending_migrations().await.unwrap(), Vec::<i64>::new());
    assert_exact(&store, EVENTS, Some(42)).await;
    let more: Vec<_> = (EVENTS..EVENTS + 2).map(event).collect();
    store
        .append(&[submission("default", json!(more))])
        .await
        .unwrap();
    // seq 301 is the redaction; events 300 and 301 are seqs 302 and 303.
    for (entity_id, seq) in [("id-300", 302), ("id-301", 303)] {
        let found = pages(&store, &[("entity_id", entity_id)], Order::Desc).await;
        assert_eq!(found, vec![seq]);
    }
    let head = store.head(&TenantId::default()).await.unwrap().unwrap();
    assert_eq!(head.seq, Seq(303));
}
