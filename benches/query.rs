//! Store-level query latency: `Store::query` for the three filters of `bench/run` (by
//! `user_identity`, by `event_data.account_id`, by a one-hour `occurred_at` window), pages of 100,
//! on a log of `BENCH_EVENTS` events shaped as `bench/populate.py` writes them. Without HTTP, so
//! the figures are the store's own: latency at one client and at `BENCH_CLIENTS`, and the
//! process's CPU time per query (from `/proc/self/stat`, on Linux).
//!
//! `cargo bench --bench query`. Environment: `BENCH_EVENTS` (default 100000), `BENCH_SECONDS` per
//! measurement (default 5), `BENCH_CLIENTS` (default 16), `BENCH_BACKENDS` (default "sqlite
//! postgres"), `AUDITOR_BENCH_DATABASE_URL` (a PostgreSQL where a scratch database may be
//! created and dropped; default postgres://postgres@127.0.0.1:5432/postgres).

mod common;

use common::env_number;

use std::time::{Duration, Instant};

use auditor::model::{EventQuery, Limits, NewEvent, RawEvent, Submission, TenantId};
use auditor::store::{PgStore, SqliteStore, Store};

/// Must match bench/populate.py and bench/query.lua.
const USERS: u64 = 10_007;
const ACCOUNTS: u64 = 100_003;
const BASE: i64 = 1_704_067_200;
const STEP: i64 = 30;
const ACTIONS: [&str; 4] = ["create", "read", "update", "delete"];

fn event(n: u64) -> NewEvent {
    let occurred_at =
        time::OffsetDateTime::from_unix_timestamp(BASE + STEP * n as i64).expect("a time in range");
    let region = ["eu", "us", "ap"][n as usize % 3];
    let raw: RawEvent = serde_json::from_value(serde_json::json!({
        "event_type": format!("bench.{}", ACTIONS[n as usize % 4]),
        "user_identity": format!("user-{}", n % USERS),
        "action": ACTIONS[n as usize % 4],
        "entity": "account",
        "entity_id": (n % ACCOUNTS).to_string(),
        "outcome": if n.is_multiple_of(10) { "failure" } else { "success" },
        "occurred_at": occurred_at.format(&time::format_description::well_known::Rfc3339)
            .expect("formattable"),
        "event_data": {"account_id": n % ACCOUNTS, "region": region, "n": n},
    }))
    .expect("valid event");
    NewEvent::parse(raw, &Limits::default()).expect("valid event")
}

/// The query of one request: `kind` as in bench/query.lua, `i` picks the value.
fn query(kind: &str, i: u64, events: u64) -> EventQuery {
    let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
    let pairs: Vec<(String, String)> = match kind {
        "user" => vec![("user_identity".into(), format!("user-{}", r % USERS))],
        "data" => vec![(
            "event_data.account_id".into(),
            (r % ACCOUNTS.min(events)).to_string(),
        )],
        _ => {
            let span = (events as i64 * STEP - 3600).max(1);
            let since = BASE + (r as i64 % span);
            let at = |t: i64| {
                time::OffsetDateTime::from_unix_timestamp(t)
                    .expect("a time in range")
                    .format(&time::format_description::well_known::Rfc3339)
                    .expect("formattable")
            };
            vec![
                ("since".into(), at(since)),
                ("until".into(), at(since + 3600)),
            ]
        }
    };
    let mut query = EventQuery::parse(&pairs).expect("a valid query");
    query.limit = 100;
    query
}

/// User and system CPU time of this process so far.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1e3
}

/// `clients` tasks querying for `seconds`; prints p50/p99 latency, rate and CPU per query.
async fn measure<S: Store>(store: &S, kind: &str, clients: u64, seconds: u64, events: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before = cpu_time();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let store = store.clone();
            let kind = kind.to_owned();
            tokio::spawn(async move {
                let tenant = TenantId::default();
                let mut samples = Vec::new();
                let mut rows = 0usize;
                let mut i = client * 1_000_003;
                while Instant::now() < deadline {
                    let query = query(&kind, i, events);
                    i += 1;
                    let at = Instant::now();
                    rows += store.query(&tenant, &query).await.expect("query").len();
                    samples.push(at.elapsed());
                }
                (samples, rows)
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut rows = 0;
    for task in tasks {
        let (some, found) = task.await.expect("query task");
        samples.extend(some);
        rows += found;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(cpu_time())
        .map(|(before, after)| (after - before).as_secs_f64() * 1e6 / samples.len() as f64);
    samples.sort();
    println!(
        "{kind:<5} c={clients:<3} p50 {:>7.3} ms  p99 {:>7.3} ms  {:>7.0} queries/s  {:>5.1} rows/query  {}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.len() as f64 / elapsed,
        rows as f64 / samples.len() as f64,
        cpu.map_or_else(|| "–".into(), |us| format!("{us:>6.0} µs CPU/query")),
    );
}

/// SQLite's store refreshes the planner's statistics every 30 s after it opened; queries are
/// measured only after the first refresh, so every run plans with them.
const STATISTICS_AFTER: Duration = Duration::from_secs(35);

async fn run<S: Store>(store: &S, events: u64, seconds: u64, clients: u64) {
    let opened = Instant::now();
    store.migrate().await.expect("migrate");
    let mut next = 0;
    while next < events {
        let start = next;
        next = (next + 1000).min(events);
        let submission = Submission::new(
            TenantId::default(),
            "bench",
            (start..next).map(event).collect(),
        );
        store.append(&[submission]).await.expect("preload");
    }
    tokio::time::sleep(STATISTICS_AFTER.saturating_sub(opened.elapsed())).await;
    for kind in ["user", "data", "range"] {
        for c in [1, clients] {
            measure(store, kind, c, seconds, events).await;
        }
    }
}

#[tokio::main]
async fn main() {
    let events = env_number("BENCH_EVENTS", 100_000);
    let seconds = env_number("BENCH_SECONDS", 5);
    let clients = env_number("BENCH_CLIENTS", 16);
    let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite postgres".into());
    if backends.contains("sqlite") {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        println!("SQLite, {events} events");
        let store = SqliteStore::connect(&url, 4).await.expect("open");
        run(&store, events, seconds, clients).await;
    }
    if backends.contains("postgres") {
        let database = common::BenchDatabase::create("auditor_bench_query").await;
        println!("PostgreSQL, {events} events");
        let store = PgStore::connect(&database.url, 16).await.expect("connect");
        run(&store, events, seconds, clients).await;
        drop(store);
        database.drop_now().await;
    }
}
