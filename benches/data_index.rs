//! What SQLite's postings save `event_data` path queries (`event_data_index` from migration
//! 0003, postings since 0009, posting lists since 0010): path query latencies through them
//! against the scanning predicate they replaced, and the append rate with them.
//!
//! `cargo bench --bench data_index` (SQLite in a temp dir). Environment: `BENCH_EVENTS`
//! (default 100000), `BENCH_QUERIES` (samples per query, default 50).

mod common;

use common::env_number;

use std::time::{Duration, Instant};

use auditor::model::{EventQuery, Limits, NewEvent, RawEvent, Submission, TenantId};
use auditor::store::{SqliteStore, Store};

const BATCH: u64 = 1000;

/// Five scalar leaves: a unique number, a common one, a string, a boolean, a nested string.
fn event(i: u64) -> NewEvent {
    let currency = ["EUR", "USD"][i as usize % 2];
    let raw: RawEvent = serde_json::from_value(serde_json::json!({
        "event_type": "customer.billed",
        "user_identity": format!("customer-{}", i % 10_000),
        "event_data": {"invoice": i, "amount": i % 5000, "currency": currency,
                       "paid": i.is_multiple_of(3), "plan": {"tier": format!("t{}", i % 7)}}
    }))
    .expect("valid event");
    NewEvent::parse(raw, &Limits::default()).expect("valid event")
}

async fn open(dir: &tempfile::TempDir, name: &str) -> (SqliteStore, String) {
    let url = format!("sqlite://{}", dir.path().join(name).display());
    let store = SqliteStore::connect(&url, 4).await.expect("open");
    store.migrate().await.expect("migrate");
    (store, url)
}

async fn append_all(store: &SqliteStore, events: u64) -> f64 {
    let started = Instant::now();
    for start in (0..events).step_by(BATCH as usize) {
        let submission = Submission::new(
            TenantId::default(),
            "bench",
            (start..(start + BATCH).min(events)).map(event).collect(),
        );
        store.append(&[submission]).await.expect("append");
    }
    events as f64 / started.elapsed().as_secs_f64()
}

/// A path query, and the predicate that answered it by scanning before migration 0003.
type Case = (String, Vec<(&'static str, String)>, String);

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let events = env_number("BENCH_EVENTS", 100_000);
    let samples = env_number("BENCH_QUERIES", 50);
    let dir = tempfile::tempdir().expect("temp dir");

    let (indexed, indexed_url) = open(&dir, "indexed.db").await;
    let with = append_all(&indexed, events).await;
    indexed.flush_postings().await.expect("flush the postings");
    println!("events:                            {events}, appended in batches of {BATCH}");
    println!("append with index maintenance:     {with:.0} events/s");
    let conn =
        rusqlite::Connection::open(indexed_url.trim_start_matches("sqlite://")).expect("open");
    conn.execute_batch("ANALYZE").expect("analyze");
    let size = |table: &'static str| {
        let sql = format!("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE '{table}%'");
        conn.query_row(&sql, [], |row| row.get::<_, i64>(0))
            .unwrap_or(0)
    };
    println!(
        "size: events and their indexes {:.1} MiB, postings (every filter) {:.1} MiB",
        size("events") as f64 / 1048576.0,
        size("posting_lists") as f64 / 1048576.0
    );

    let rare = events / 2;
    let cases: Vec<Case> = vec![
        (
            format!("invoice={rare} (1 match)"),
            vec![("event_data.invoice", rare.to_string())],
            format!(
                "json_type(event_data, '$.\"invoice\"') IN ('integer', 'real') \
                 AND json_extract(event_data, '$.\"invoice\"') = {rare}"
            ),
        ),
        (
            "plan.tier=t3 (1/7, first page)".into(),
            vec![("event_data.plan.tier", "t3".into())],
            "json_type(event_data, '$.\"plan\".\"tier\"') = 'text' \
             AND json_extract(event_data, '$.\"plan\".\"tier\"') = 't3'"
                .into(),
        ),
        (
            "amount=42 & paid=true (1/15000)".into(),
            vec![
                ("event_data.amount", "42".into()),
                ("event_data.paid", "true".into()),
            ],
            "json_type(event_data, '$.\"amount\"') IN ('integer', 'real') \
             AND json_extract(event_data, '$.\"amount\"') = 42 \
             AND json_type(event_data, '$.\"paid\"') = 'true'"
                .into(),
        ),
    ];
    let tenant = TenantId::default();
    for (name, filters, scan) in cases {
        for order in ["asc", "desc"] {
            let mut pairs: Vec<(String, String)> = filters
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            pairs.push(("order".into(), order.into()));
            let query = EventQuery::parse(&pairs).expect("query");
            let scan_sql = format!(
                "SELECT * FROM events WHERE tenant = 'default' AND {scan} \
                 ORDER BY seq {order} LIMIT 101"
            );
            let mut through_index = Vec::new();
            let mut scanning = Vec::new();
            let mut found = (0, 0);
            for _ in 0..samples {
                let started = Instant::now();
                found.0 = indexed.query(&tenant, &query).await.expect("query").len();
                through_index.push(started.elapsed());
                let started = Instant::now();
                let mut scan = conn.prepare_cached(&scan_sql).expect("scan");
                let mut rows = scan.query([]).expect("scan");
                found.1 = 0;
                while rows.next().expect("scan").is_some() {
                    found.1 += 1;
                }
                scanning.push(started.elapsed());
            }
            assert_eq!(found.0, found.1, "{name}: both find the same rows");
            println!(
                "{name:<34} {order:<4} index {:>8.3} ms, scan {:>8.3} ms (median of {samples}, {} rows)",
                median(through_index),
                median(scanning),
                found.0
            );
        }
    }
}
