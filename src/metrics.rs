//! Prometheus metrics: every name the service records, the process-wide recorder, and the
//! scrape, which adds the per-tenant state read from the store at that moment.
//!
//! The counters and histograms are recorded where things happen, through the `metrics` crate's
//! macros, into `metrics-exporter-prometheus`'s recorder; [`render`] writes them in the
//! Prometheus text exposition format (version 0.0.4), followed by [`TenantGauges`].

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use time::OffsetDateTime;

/// HTTP requests answered, by `route` (the matched pattern, `unmatched` for none), `method` and
/// `status`.
pub const HTTP_REQUESTS: &str = "auditor_http_requests_total";
/// Time from a request's arrival until its response's head was ready, in seconds, by `route`
/// and `method`. A streamed body (bulk, export, stream) is counted until its head.
pub const HTTP_REQUEST_DURATION: &str = "auditor_http_request_duration_seconds";
/// Events committed, by `tenant`.
pub const EVENTS_INGESTED: &str = "auditor_events_ingested_total";
/// Events per committed write transaction (group commit).
pub const WRITE_BATCH_EVENTS: &str = "auditor_write_batch_events";
/// Time one write transaction took, from its start to its commit, in seconds.
pub const WRITE_COMMIT_DURATION: &str = "auditor_write_commit_duration_seconds";
/// Submissions waiting for the writer, sampled at each scrape.
pub const WRITE_QUEUE_DEPTH: &str = "auditor_write_queue_depth";
/// The most submissions that may wait for the writer (`writer.queue_capacity`).
pub const WRITE_QUEUE_CAPACITY: &str = "auditor_write_queue_capacity";
/// Submissions the writer could not commit, by `reason` (`unavailable`, `queue_full`,
/// `rejected`).
pub const WRITE_FAILURES: &str = "auditor_write_failures_total";
/// Database connections of this process, by `state` (`in_use`, `idle`), sampled at each scrape.
pub const DATABASE_CONNECTIONS: &str = "auditor_database_connections";
/// The most database connections this process opens.
pub const DATABASE_CONNECTIONS_MAX: &str = "auditor_database_connections_max";
/// Errors the database returned, by `kind` (`unavailable`: it could not be reached or was
/// busy; `other`).
pub const DATABASE_ERRORS: &str = "auditor_database_errors_total";
/// Broker messages handled, by `consumer` (the `recorded_by` of its events, e.g.
/// `nats:AUDIT`) and `fate` (`committed`, `dead_lettered`, `retried`: the database could not
/// take it, so it is redelivered).
pub const BROKER_MESSAGES: &str = "auditor_broker_messages_total";
/// Write-ahead log a capture's replication slot holds back on the host database, in bytes, by
/// `capture` (the configured name), as of the last check (every 30 s).
pub const CAPTURE_SLOT_LAG: &str = "auditor_capture_slot_lag_bytes";
/// Row changes captured and committed, by `capture`.
pub const CAPTURE_CHANGES: &str = "auditor_capture_changes_total";
/// Times a broker consumer or a capture failed and started over after its back-off, by
/// `consumer` (e.g. `capture `billing-db``): a rate above zero means it is not consuming.
pub const CONSUMER_FAILURES: &str = "auditor_consumer_failures_total";

/// Upper bounds of the latency histograms' buckets, in seconds: 0.5 ms to 10 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the batch-size histogram's buckets, in events.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// How often the recorder drains its histograms and forgets idle series.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed (with every metric described) on the first call; later
/// calls return the same handle. Must be called inside a Tokio runtime the first time: it spawns
/// the recorder's upkeep.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(WRITE_BATCH_EVENTS.into()),
                        &BATCH_BUCKETS,
                    )
                })
                .expect("the bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder already installed (only in tests that embed the service):
            // the metrics then go there, and this handle renders an empty registry.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows none");
            }
            describe();
            let upkeep = handle.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(UPKEEP_INTERVAL).await;
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time until a response's head was ready"
    );
    describe_counter!(EVENTS_INGESTED, "Events committed");
    describe_histogram!(
        WRITE_BATCH_EVENTS,
        Unit::Count,
        "Events per committed write transaction"
    );
    describe_histogram!(
        WRITE_COMMIT_DURATION,
        Unit::Seconds,
        "Time one write transaction took until its commit"
    );
    describe_gauge!(WRITE_QUEUE_DEPTH, "Submissions waiting for the writer");
    describe_gauge!(
        WRITE_QUEUE_CAPACITY,
        "The most submissions that may wait for the writer"
    );
    describe_counter!(WRITE_FAILURES, "Submissions the writer could not commit");
    describe_gauge!(DATABASE_CONNECTIONS, "Database connections of this process");
    describe_gauge!(
        DATABASE_CONNECTIONS_MAX,
        "The most database connections this process opens"
    );
    describe_counter!(DATABASE_ERRORS, "Errors the database returned");
    describe_counter!(BROKER_MESSAGES, "Broker messages handled");
    describe_gauge!(
        CAPTURE_SLOT_LAG,
        Unit::Bytes,
        "Write-ahead log a capture's replication slot holds back"
    );
    describe_counter!(CAPTURE_CHANGES, "Row changes captured and committed");
    describe_counter!(
        CONSUMER_FAILURES,
        "Times a broker consumer or a capture failed and started over"
    );
}

/// One tenant's log as a scrape shows it.
#[derive(Debug, Clone)]
pub struct TenantGauges {
    pub tenant: String,
    /// The `seq` of the tenant's last event (its chain head); 0 before the first.
    pub head_seq: u64,
    /// The latest signed checkpoint's tree size and signing time, if any.
    pub checkpoint: Option<(u64, OffsetDateTime)>,
}

/// The recorder's metrics and then, per tenant, `auditor_chain_head_seq`,
/// `auditor_checkpoint_tree_size` and `auditor_checkpoint_age_seconds` (as of `now`), in the
/// Prometheus text format.
pub fn render(handle: &PrometheusHandle, tenants: &[TenantGauges], now: OffsetDateTime) -> String {
    let mut out = handle.render();
    family(
        &mut out,
        "auditor_chain_head_seq",
        "The seq of the tenant's last event (0 before the first)",
        tenants.iter().map(|t| (&t.tenant, t.head_seq as f64)),
    );
    family(
        &mut out,
        "auditor_checkpoint_tree_size",
        "The tree size of the tenant's latest signed checkpoint",
        tenants
            .iter()
            .filter_map(|t| Some((&t.tenant, t.checkpoint?.0 as f64))),
    );
    family(
        &mut out,
        "auditor_checkpoint_age_seconds",
        "Seconds since the tenant's latest checkpoint was signed",
        tenants.iter().filter_map(|t| {
            let issued_at = t.checkpoint?.1;
            Some((&t.tenant, (now - issued_at).as_seconds_f64().max(0.0)))
        }),
    );
    out
}

fn family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (&'a String, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (tenant, value) in samples {
        let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {value}", label_value(tenant));
    }
}

/// A label value escaped as the text format requires: backslash, double quote and newline.
fn label_value(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_families_escape_labels_and_skip_tenants_without_checkpoints() {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let issued = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1000);
        let tenants = [
            TenantGauges {
                tenant: "acme".into(),
                head_seq: 42,
                checkpoint: Some((40, issued)),
            },
            TenantGauges {
                tenant: "we\"ird\\".into(),
                head_seq: 0,
                checkpoint: None,
            },
        ];
        let text = render(&handle, &tenants, issued + Duration::from_secs(90));
        assert!(text.contains("auditor_chain_head_seq{tenant=\"acme\"} 42\n"));
        assert!(text.contains("auditor_chain_head_seq{tenant=\"we\\\"ird\\\\\"} 0\n"));
        assert!(text.contains("auditor_checkpoint_tree_size{tenant=\"acme\"} 40\n"));
        assert!(text.contains("auditor_checkpoint_age_seconds{tenant=\"acme\"} 90\n"));
        assert!(!text.contains("auditor_checkpoint_tree_size{tenant=\"we"));
    }
}
