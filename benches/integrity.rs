//! Integrity figures on a large log, in one run: append throughput (with the chain and tree),
//! the share of it spent hashing, `verify` speed, and inclusion-proof latency.
//!
//! `cargo bench --bench integrity` (SQLite in a temp dir). Environment:
//! `BENCH_EVENTS` (default 1000000), `BENCH_DATABASE_URL` (e.g. a PostgreSQL database to use
//! instead; it must be empty), `BENCH_PROOFS` (default 2000).

mod common;

use common::env_number;

use std::time::{Duration, Instant};

use auditor::integrity::verify::verify_store;
use auditor::integrity::{Chained, chain_events, commitment, proofs};
use auditor::model::{Limits, NewEvent, RawEvent, Seq, Submission, TenantId};
use auditor::store::{PgStore, SqliteStore, Store};

const BATCH: usize = 1000;

fn event(i: u64) -> NewEvent {
    let raw: RawEvent = serde_json::from_value(serde_json::json!({
        "event_type": "customer.billed",
        "user_identity": format!("customer-{}", i % 10_000),
        "action": "update",
        "entity": "invoice",
        "entity_id": format!("inv-{i}"),
        "event_data": {"amount": i % 5000, "currency": "EUR", "plan": {"tier": "gold"}}
    }))
    .expect("valid event");
    NewEvent::parse(raw, &Limits::default()).expect("valid event")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn run<S: Store>(store: S, events: u64, proofs_wanted: u64) {
    store.migrate().await.expect("migrate");
    let tenant = TenantId::default();

    // 1. Hashing alone: sealing (fingerprint, commitments), leaf, chain link and Merkle
    // frontier, no I/O.
    let mut hashing = Duration::ZERO;
    let mut head = Chained::genesis();
    let now = time::OffsetDateTime::now_utc();
    for start in (0..events).step_by(BATCH) {
        let batch: Vec<NewEvent> = (start..(start + BATCH as u64).min(events))
            .map(event)
            .collect();
        let started = Instant::now();
        let batch = batch
            .into_iter()
            .map(|event| {
                let sealing = commitment::seal(&event);
                (event, sealing)
            })
            .collect();
        chain_events(&mut head, &tenant, "bench", now, batch);
        hashing += started.elapsed();
    }

    // 2. Appending through the store in batches of 1000, as group commit does under load.
    let started = Instant::now();
    for start in (0..events).step_by(BATCH) {
        let submission = Submission::new(
            tenant.clone(),
            "bench",
            (start..(start + BATCH as u64).min(events))
                .map(event)
                .collect(),
        );
        store.append(&[submission]).await.expect("append");
    }
    let appending = started.elapsed();
    let append_rate = events as f64 / appending.as_secs_f64();

    // 3. Verify the whole log.
    let started = Instant::now();
    let results = verify_store(&store, &[], &[], |_, _| {})
        .await
        .expect("verify");
    let verifying = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // 4. Inclusion proofs for random events in the full tree.
    let mut latencies = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..proofs_wanted {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let seq = Seq((state % events) as i64 + 1);
        let started = Instant::now();
        proofs::inclusion(&store, &tenant, seq, events)
            .await
            .expect("proof");
        latencies.push(started.elapsed());
    }
    latencies.sort();

    println!("events:                        {events}");
    println!(
        "append (batches of {BATCH}):      {append_rate:.0} events/s ({:.1} s)",
        appending.as_secs_f64()
    );
    println!(
        "hashing alone:                 {:.0} events/s; {:.1}% of append time",
        events as f64 / hashing.as_secs_f64(),
        100.0 * hashing.as_secs_f64() / appending.as_secs_f64()
    );
    println!(
        "verify:                        {:.0} events/s ({:.1} s)",
        events as f64 / verifying.as_secs_f64(),
        verifying.as_secs_f64()
    );
    println!(
        "inclusion proof ({} samples):  p50 {:.3} ms, p99 {:.3} ms",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    let events = env_number("BENCH_EVENTS", 1_000_000);
    let proofs_wanted = env_number("BENCH_PROOFS", 2000);
    match std::env::var("BENCH_DATABASE_URL") {
        Ok(url) if url.starts_with("postgres") => {
            println!("backend: PostgreSQL");
            run(
                PgStore::connect(&url, 4).await.expect("connect"),
                events,
                proofs_wanted,
            )
            .await
        }
        _ => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            println!("backend: SQLite");
            run(
                SqliteStore::connect(&url, 4).await.expect("open"),
                events,
                proofs_wanted,
            )
            .await
        }
    }
}
