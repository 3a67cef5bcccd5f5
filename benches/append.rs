//! Store-level ingest: how fast `Store::append` takes batches of the sizes group commit produces
//! (1 event, 64 — one per concurrent client of the HTTP benchmark — and 1000), on a log that
//! already holds `BENCH_PRELOAD` events; and, on PostgreSQL, the raw `COPY` rate of the same rows
//! into a table with the same indexes and into a bare one, the yardsticks of the throughput issue.
//!
//! `cargo bench --bench append`. Environment: `BENCH_PRELOAD` (default 100000), `BENCH_SECONDS`
//! per batch size (default 5), `BENCH_BACKENDS` (default "sqlite postgres"),
//! `AUDITOR_BENCH_DATABASE_URL` (a PostgreSQL where a scratch database may be created and dropped;
//! default postgres://postgres@127.0.0.1:5432/postgres).

mod common;

use common::env_number;

use std::time::{Duration, Instant};

use auditor::model::{Limits, NewEvent, RawEvent, Submission, TenantId};
use auditor::store::{PgStore, SqliteStore, Store};
use sqlx::Connection;

const BATCH_SIZES: [usize; 3] = [1, 64, 1000];

/// The HTTP benchmark's event shape (bench/post.lua): random user and entity ids, a small payload.
fn event(i: u64) -> NewEvent {
    let n = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    let raw: RawEvent = serde_json::from_value(serde_json::json!({
        "event_type": "bench.ingest",
        "user_identity": format!("ingest-{}", n % 997),
        "action": "create",
        "entity": "account",
        "entity_id": n.to_string(),
        "outcome": "success",
        "event_data": {"account_id": n % 100_003, "note": "load test", "n": n}
    }))
    .expect("valid event");
    NewEvent::parse(raw, &Limits::default()).expect("valid event")
}

fn submission(range: std::ops::Range<u64>) -> Submission {
    Submission::new(TenantId::default(), "bench", range.map(event).collect())
}

/// Appends `batch`-event submissions for `seconds`; returns events per second.
async fn append_rate<S: Store>(store: &S, next: &mut u64, batch: usize, seconds: u64) -> f64 {
    let started = Instant::now();
    let mut appended = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let start = *next;
        *next += batch as u64;
        store
            .append(&[submission(start..*next)])
            .await
            .expect("append");
        appended += batch as u64;
    }
    appended as f64 / started.elapsed().as_secs_f64()
}

/// Preloads, then measures each batch size; returns the rate of the largest batches.
async fn run<S: Store>(store: &S, preload: u64, seconds: u64) -> f64 {
    store.migrate().await.expect("migrate");
    let mut next = 0u64;
    while next < preload {
        let start = next;
        next = (next + 1000).min(preload);
        store
            .append(&[submission(start..next)])
            .await
            .expect("preload");
    }
    let mut rate = 0.0;
    for batch in BATCH_SIZES {
        rate = append_rate(store, &mut next, batch, seconds).await;
        println!("append, batches of {batch:>4}:          {rate:>9.0} events/s");
    }
    rate
}

/// `COPY` of rows already in `events` into a table with the same indexes, and into a bare one;
/// returns the bare table's rate.
async fn copy_rates(url: &str, rows: u64) -> f64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let mut data = Vec::new();
    let mut out = conn
        .copy_out_raw(&format!(
            "COPY (SELECT * FROM events ORDER BY seq LIMIT {rows}) TO STDOUT"
        ))
        .await
        .expect("copy out");
    while let Some(chunk) = futures::StreamExt::next(&mut out).await {
        data.extend_from_slice(&chunk.expect("copy chunk"));
    }
    drop(out);
    let mut rate = 0.0;
    for (name, like) in [
        ("same indexes", "INCLUDING DEFAULTS INCLUDING INDEXES"),
        ("no indexes", "INCLUDING DEFAULTS"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS copy_target; CREATE TABLE copy_target (LIKE events {like})"
        )))
        .execute(&mut conn)
        .await
        .expect("copy table");
        let started = Instant::now();
        let mut copy = conn
            .copy_in_raw("COPY copy_target FROM STDIN")
            .await
            .expect("copy in");
        copy.send(data.as_slice()).await.expect("copy send");
        copy.finish().await.expect("copy finish");
        rate = rows as f64 / started.elapsed().as_secs_f64();
        println!("raw COPY of {rows} rows, {name:<12}: {rate:>9.0} rows/s");
    }
    rate
}

#[tokio::main]
async fn main() {
    let preload = env_number("BENCH_PRELOAD", 100_000);
    let seconds = env_number("BENCH_SECONDS", 5);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite postgres".into());
    if backends.contains("sqlite") {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        println!("SQLite, {preload} events preloaded");
        let store = SqliteStore::connect(&url, 4).await.expect("open");
        run(&store, preload, seconds).await;
    }
    if backends.contains("postgres") {
        let database = common::BenchDatabase::create("auditor_bench_append").await;
        let url = database.url.clone();
        println!("PostgreSQL, {preload} events preloaded");
        let store = PgStore::connect(&url, 4).await.expect("connect");
        let append = run(&store, preload, seconds).await;
        let bare = copy_rates(&url, preload.min(100_000)).await;
        println!(
            "append in batches of {} / bare COPY:  {:>9.2}",
            BATCH_SIZES[BATCH_SIZES.len() - 1],
            append / bare
        );
        drop(store);
        database.drop_now().await;
    }
}
