//! `/metrics`: the Prometheus text format, parsed by a Prometheus text parser; who may read it
//! on the API's listener; and `metrics.listen`, which serves it apart without credentials.

use auditor::auth::Role;
use auditor::model::{TenantId, TenantScope};
use prometheus_parse::{Sample, Scrape, Value};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{ADMIN, Backend, READER, WRITER, settings_for, spawn_app, spawn_with};

const ACME_ADMIN: (&str, &str) = ("acme-admin", "acme-admin-password-1");

async fn parsed(response: reqwest::Response) -> Scrape {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.expect("body");
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("Prometheus text format")
}

fn samples<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, metric, labels);
    assert_eq!(found.len(), 1, "one {metric}{labels:?} in the scrape");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{metric} is {other:?}"),
    }
}

async fn a_scrape_shows_requests_writes_connections_and_every_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..3 {
        app.record(json!({"event_type": "t", "user_identity": format!("u{i}")}))
            .await;
    }
    let acme = app
        .post_json(
            "/events?tenant=acme",
            ADMIN,
            &json!({"event_type": "t", "user_identity": "u"}),
        )
        .await;
    assert_eq!(acme.status(), 201);
    let signed = app
        .request(Method::POST, "/checkpoints", Some(ADMIN))
        .send()
        .await
        .expect("request");
    // 200 when the checkpointer, which signs new events within a second, got there first.
    assert!([200, 201].contains(&signed.status().as_u16()));

    let scrape = parsed(app.get("/metrics", ADMIN).await).await;

    // Counted where they happen (at least: a process running other tests counts theirs too).
    let posted = [("route", "/events"), ("method", "POST"), ("status", "201")];
    assert!(value(&scrape, "auditor_http_requests_total", &posted) >= 4.0);
    assert!(
        value(
            &scrape,
            "auditor_events_ingested_total",
            &[("tenant", "default")]
        ) >= 3.0
    );
    assert!(
        value(
            &scrape,
            "auditor_events_ingested_total",
            &[("tenant", "acme")]
        ) >= 1.0
    );
    let latency = samples(
        &scrape,
        "auditor_http_request_duration_seconds",
        &[("route", "/events"), ("method", "POST")],
    );
    match &latency[0].value {
        Value::Histogram(buckets) => {
            assert!(buckets.iter().any(|b| b.less_than == 0.001));
            assert!(buckets.last().expect("buckets").count >= 4.0);
        }
        other => panic!("latency is {other:?}"),
    }
    assert!(!samples(&scrape, "auditor_write_batch_events", &[]).is_empty());
    assert!(!samples(&scrape, "auditor_write_commit_duration_seconds", &[]).is_empty());

    // Sampled at the scrape.
    assert_eq!(value(&scrape, "auditor_write_queue_capacity", &[]), 8192.0);
    assert!(value(&scrape, "auditor_write_queue_depth", &[]) >= 0.0);
    assert!(value(&scrape, "auditor_database_connections_max", &[]) >= 1.0);
    let open = value(
        &scrape,
        "auditor_database_connections",
        &[("state", "in_use")],
    ) + value(
        &scrape,
        "auditor_database_connections",
        &[("state", "idle")],
    );
    assert!(open >= 1.0, "connections open: {open}");

    // Read from the store: exact.
    assert_eq!(
        value(&scrape, "auditor_chain_head_seq", &[("tenant", "default")]),
        3.0
    );
    assert_eq!(
        value(&scrape, "auditor_chain_head_seq", &[("tenant", "acme")]),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "auditor_checkpoint_tree_size",
            &[("tenant", "default")]
        ),
        3.0
    );
    let age = value(
        &scrape,
        "auditor_checkpoint_age_seconds",
        &[("tenant", "default")],
    );
    assert!((0.0..60.0).contains(&age), "checkpoint age {age}");
    assert!(scrape.docs.contains_key("auditor_chain_head_seq"));

    // Methods a client invents are counted as one `other`, not a series each.
    for invented in ["INVENTED1", "INVENTED2"] {
        let method = Method::from_bytes(invented.as_bytes()).expect("method");
        let answered = app
            .request(method, "/events", Some(ADMIN))
            .send()
            .await
            .expect("request");
        assert_eq!(answered.status(), 405);
    }

    // A later scrape sees the request counted that made the first one.
    let again = parsed(app.get("/metrics", ADMIN).await).await;
    let scraped = [("route", "/metrics"), ("method", "GET"), ("status", "200")];
    assert!(value(&again, "auditor_http_requests_total", &scraped) >= 1.0);
    let invented = [("route", "/events"), ("method", "other"), ("status", "405")];
    // At least: in one process with other tests, theirs count too.
    assert!(value(&again, "auditor_http_requests_total", &invented) >= 2.0);
    assert!(
        again.samples.iter().all(|s| !s
            .labels
            .get("method")
            .is_some_and(|m| m.starts_with("INVENTED"))),
        "an invented method has a series of its own"
    );
}

async fn only_an_admin_of_every_tenant_reads_metrics_on_the_api_listener(backend: Backend) {
    let app = spawn_app(backend).await;
    app.add_user_in(
        ACME_ADMIN.0,
        Role::Admin,
        TenantScope::One(TenantId::new("acme")),
        ACME_ADMIN.1,
    )
    .await;
    let anonymous = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401);
    for who in [WRITER, READER, ACME_ADMIN] {
        let response = app.get("/metrics", who).await;
        assert_eq!(response.status(), 403, "{}", who.0);
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
}

async fn metrics_listen_serves_metrics_alone_without_credentials(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = free.local_addr().expect("address");
    drop(free);
    settings.metrics.listen = Some(address);
    let app = spawn_with(db, settings).await;
    app.record(json!({"event_type": "t", "user_identity": "u"}))
        .await;

    let client = crate::helpers::http_client();
    let open = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .expect("request");
    let scrape = parsed(open).await;
    assert_eq!(
        value(&scrape, "auditor_chain_head_seq", &[("tenant", "default")]),
        1.0
    );
    let elsewhere = client
        .get(format!("http://{address}/events"))
        .send()
        .await
        .expect("request");
    assert_eq!(elsewhere.status(), 404);
}

crate::both_backends!(
    a_scrape_shows_requests_writes_connections_and_every_tenant,
    only_an_admin_of_every_tenant_reads_metrics_on_the_api_listener,
    metrics_listen_serves_metrics_alone_without_credentials,
);
