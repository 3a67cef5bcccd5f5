//! Start-up, restart, readiness and shutdown.

use serde_json::{Value, json};

use crate::helpers::{
    ADMIN, Backend, TestDb, assert_gapless_chain, settings_for, spawn_app, spawn_with,
};

async fn events_survive_a_restart(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let event = app
        .record(json!({"event_type": "a", "user_identity": "u"}))
        .await;
    app.restart().await;
    let id = event["id"].as_str().unwrap();
    assert_eq!(app.get_ok(&format!("/events/{id}")).await, event);
    let next = app
        .record(json!({"event_type": "b", "user_identity": "u"}))
        .await;
    assert_eq!(next["seq"], 2);
    assert_eq!(
        next["prev_hash"], event["hash"],
        "the chain continues across restarts"
    );
}

async fn serve_refuses_a_database_with_pending_migrations(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settings = settings_for(&db);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = auditor::serve_with_listener(
        settings,
        listener,
        tokio_util::sync::CancellationToken::new(),
        false,
    )
    .await;
    let error = result.expect_err("must refuse to start").to_string();
    assert!(
        error.contains("auditor migrate") && error.contains("--migrate"),
        "{error}"
    );
}

async fn without_a_configured_password_the_admin_gets_a_generated_one(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.admin_password = None;
    let app = spawn_with(db, settings).await;
    assert_eq!(
        app.get("/events", ADMIN).await.status(),
        401,
        "no default password"
    );
    let users = match backend {
        Backend::Sqlite => auditor::store::Store::list_users(&app.db.sqlite().await).await,
        Backend::Postgres => auditor::store::Store::list_users(&app.db.postgres().await).await,
    }
    .unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "admin");
    assert!(users[0].password_hash.starts_with("$argon2id$"));
    // No terminal here: the password is left in a file only its owner may read, not logged.
    let file = app
        .settings
        .signing_key_path()
        .with_file_name(auditor::server::GENERATED_PASSWORD_FILE);
    let password = std::fs::read_to_string(&file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        app.get("/events", ("admin", password.trim_end()))
            .await
            .status(),
        200,
        "the password in the file signs in"
    );
}

async fn readiness_reports_the_database(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .request(reqwest::Method::GET, "/readyz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ready");
}

/// With every background task running (retention included, which appends through the writer),
/// a shutdown completes.
async fn shutdown_is_clean_and_stops_serving(backend: Backend) {
    use crate::helpers::{TestDb, settings_for, spawn_with};

    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.retention.max_age_days = 30;
    settings.retention.check_interval_secs = 1;
    let mut app = spawn_with(db, settings).await;
    app.record(json!({"event_type": "a", "user_identity": "u"}))
        .await;
    tokio::time::timeout(std::time::Duration::from_secs(30), app.stop())
        .await
        .expect("the server stops within 30 s")
        .expect("graceful stop");
    let refused = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await;
    assert!(refused.is_err(), "nothing listens after shutdown");
}

crate::both_backends!(
    events_survive_a_restart,
    serve_refuses_a_database_with_pending_migrations,
    without_a_configured_password_the_admin_gets_a_generated_one,
    readiness_reports_the_database,
    shutdown_is_clean_and_stops_serving,
);

/// A TCP proxy in front of PostgreSQL that the test can cut and restore, to take the database
/// away from the service without touching the shared server.
pub(crate) mod outage {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Mutex;
    use tokio::task::JoinHandle;

    pub struct Proxy {
        pub port: u16,
        open: Arc<AtomicBool>,
        links: Arc<Mutex<Vec<JoinHandle<()>>>>,
        _accept: JoinHandle<()>,
    }

    impl Proxy {
        pub async fn to(upstream: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let open = Arc::new(AtomicBool::new(true));
            let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
            let accept = {
                let (open, links) = (open.clone(), links.clone());
                tokio::spawn(async move {
                    while let Ok((mut client, _)) = listener.accept().await {
                        if !open.load(Ordering::SeqCst) {
                            continue; // dropped: the connection is refused
                        }
                        let upstream = upstream.clone();
                        links.lock().await.push(tokio::spawn(async move {
                            if let Ok(mut server) = TcpStream::connect(upstream).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        }));
                    }
                })
            };
            Self {
                port,
                open,
                links,
                _accept: accept,
            }
        }

        pub async fn cut(&self) {
            self.open.store(false, Ordering::SeqCst);
            for link in self.links.lock().await.drain(..) {
                link.abort();
            }
        }

        pub fn restore(&self) {
            self.open.store(true, Ordering::SeqCst);
        }
    }
}

/// A service whose PostgreSQL connections go through a proxy that the test can cut.
async fn spawn_behind_proxy() -> (crate::helpers::TestApp, outage::Proxy) {
    spawn_behind_proxy_with(|_| {}).await
}

/// The same, with `adjust` applied to its settings.
pub(crate) async fn spawn_behind_proxy_with(
    adjust: impl FnOnce(&mut auditor::config::Settings),
) -> (crate::helpers::TestApp, outage::Proxy) {
    let db = TestDb::new(Backend::Postgres).await;
    let url = url_parts(&db.url);
    let proxy = outage::Proxy::to(url.host_port.clone()).await;
    let mut settings = settings_for(&db);
    settings.database_url = auditor::config::DatabaseUrl::new(format!(
        "{}127.0.0.1:{}/{}",
        url.prefix, proxy.port, url.database
    ));
    adjust(&mut settings);
    let app = spawn_with(db, settings).await;
    (app, proxy)
}

/// PostgreSQL disappears under a running service: it answers 503 (never a false 2xx), and once
/// the database is back it recovers by itself with nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503_then_recovers_by_itself() {
    let (app, proxy) = spawn_behind_proxy().await;
    let before = app
        .record(json!({"event_type": "a", "user_identity": "u"}))
        .await;

    proxy.cut().await;
    let ready = app
        .request(reqwest::Method::GET, "/readyz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let write = app
        .post_json(
            "/events",
            ADMIN,
            &json!({"event_type": "b", "user_identity": "u"}),
        )
        .await;
    assert_eq!(write.status(), 503);
    assert!(write.headers().contains_key("retry-after"));

    proxy.restore();
    let mut recovered = false;
    for _ in 0..100 {
        let ready = app
            .request(reqwest::Method::GET, "/readyz", None)
            .send()
            .await
            .unwrap();
        if ready.status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "ready again within 10 s of the database returning"
    );
    let after = app
        .record(json!({"event_type": "c", "user_identity": "u"}))
        .await;
    assert_eq!(after["seq"], 2, "the failed write left no trace and no gap");
    assert_eq!(after["prev_hash"], before["hash"]);
}

/// The same outage while eight clients write: during it they get 503 (never a false 2xx), after
/// it the service recovers by itself, and every event answered 201 is in one gapless chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_loses_no_acknowledged_event() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const CLIENTS: usize = 8;
    let (app, proxy) = spawn_behind_proxy().await;
    let stop = AtomicBool::new(false);

    let client = |client: usize| {
        let (app, stop) = (&app, &stop);
        async move {
            let (mut acknowledged, mut refused, mut recovered) = (Vec::new(), 0, false);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = json!({"event_type": "outage", "user_identity": format!("c{client}"),
                                  "event_data": {"i": i}});
                let response = app.post_json("/events", ADMIN, &body).await;
                match response.status().as_u16() {
                    201 => {
                        recovered |= refused > 0;
                        acknowledged.push(response.json::<Value>().await.unwrap()["id"].clone());
                    }
                    503 => {
                        assert!(response.headers().contains_key("retry-after"));
                        refused += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    status => panic!("only 201 or 503, got {status}"),
                }
                i += 1;
            }
            (acknowledged, refused, recovered)
        }
    };
    let outage = async {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        proxy.cut().await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        proxy.restore();
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (results, ()) = tokio::join!(futures::future::join_all((0..CLIENTS).map(client)), outage);

    assert!(
        results.iter().any(|(_, refused, _)| *refused > 0),
        "the outage was seen as 503s"
    );
    assert!(
        results.iter().any(|(_, _, recovered)| *recovered),
        "writes succeed again after it"
    );
    let acknowledged: Vec<Value> = results.into_iter().flat_map(|(a, _, _)| a).collect();
    let events = app.all_events().await;
    assert_gapless_chain(&events);
    let stored: std::collections::HashSet<String> =
        events.iter().map(|e| e.id.to_string()).collect();
    for id in &acknowledged {
        assert!(
            stored.contains(id.as_str().unwrap()),
            "acknowledged but lost: {id}"
        );
    }
    let next = app
        .record(json!({"event_type": "after", "user_identity": "u"}))
        .await;
    assert_eq!(next["seq"], events.len() as i64 + 1);
}

struct UrlParts {
    prefix: String,
    host_port: String,
    database: String,
}

/// Splits `postgres://user@host:port/db` into `postgres://user@`, `host:port` and `db`.
fn url_parts(url: &str) -> UrlParts {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, database) = rest.split_once('/').unwrap();
    let (credentials, host_port) = match authority.rsplit_once('@') {
        Some((credentials, host)) => (format!("{credentials}@"), host.to_owned()),
        None => (String::new(), authority.to_owned()),
    };
    let host_port = if host_port.contains(':') {
        host_port
    } else {
        format!("{host_port}:5432")
    };
    UrlParts {
        prefix: format!("{scheme}://{credentials}"),
        host_port,
        database: database.to_owned(),
    }
}

/// While the writer is stuck (here: another process holds SQLite's write lock), at most one
/// submission is in its hands and `queue_capacity` wait; everyone else is turned away at once
/// with 503 and Retry-After instead of piling up in memory. Nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_answers_503_with_retry_after() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut settings = settings_for(&db);
    settings.writer.queue_capacity = 1;
    let app = spawn_with(db, settings).await;

    let blocker = app.db.sqlite_connection();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let posts = (0..6).map(|i| {
        let app = &app;
        async move {
            let body = json!({"event_type": "a", "user_identity": format!("u{i}")});
            app.post_json("/events", ADMIN, &body).await
        }
    });
    let pending = futures::future::join_all(posts);
    tokio::pin!(pending);
    // Release the lock only after the turned-away answers had their chance to come back.
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        blocker.execute_batch("ROLLBACK").unwrap();
    };
    let (responses, ()) = tokio::join!(pending, release);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    let refused = responses.iter().filter(|r| r.status() == 503).count();
    let accepted = statuses.iter().filter(|s| **s == 201).count();
    assert!(
        refused >= 4,
        "at most one in hand and one queued: {statuses:?}"
    );
    assert_eq!(accepted + refused, 6, "{statuses:?}");
    for response in responses.iter().filter(|r| r.status() == 503) {
        assert_eq!(response.headers()["retry-after"], "1");
    }
    let stored = app.get_ok("/events").await["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(stored, accepted, "every 201 is stored, nothing else");
}

/// `--log-format json`: one JSON object per request line, with the matched route, never the
/// credentials.
#[tokio::test]
async fn json_logs_have_one_object_per_request() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut server =
        crate::helpers::ServerProcess::serve_with_env(&db, &[("AUDITOR_LOG_FORMAT", "json")]);
    let client = crate::helpers::http_client();
    let url = format!(
        "http://{}/events/01920000-0000-7000-8000-000000000000",
        server.address
    );
    let response = client
        .get(&url)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.terminate();
    let (_, log) = server.wait();
    let request_line = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "request" && line["status"] == 404)
        .unwrap_or_else(|| panic!("no JSON request line in:\n{log}"));
    assert_eq!(request_line["span"]["route"], "/events/{id}");
    assert_eq!(request_line["span"]["method"], "GET");
    assert!(request_line["latency_ms"].is_string() || request_line["latency_ms"].is_number());
    assert!(
        !log.contains(ADMIN.1) && !log.contains("YWRtaW46c2VjcmV0"),
        "no credentials logged"
    );
}

/// The default text format escapes control characters in whatever a client sent: a user name
/// with a newline, CR or ESC (logged when authentication fails) cannot start a line of its own
/// or drive the terminal of whoever reads the log.
#[tokio::test]
async fn text_logs_escape_control_characters_from_clients() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut server = crate::helpers::ServerProcess::serve(&db);
    let user = "x\nFORGED LINE level=ERROR\r\x1b[2J\u{2028}end";
    let response = crate::helpers::http_client()
        .get(format!("http://{}/events", server.address))
        .basic_auth(user, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    server.terminate();
    let (_, log) = server.wait();
    assert!(
        !log.lines().any(|line| line.starts_with("FORGED LINE")),
        "a forged line:\n{log}"
    );
    assert!(
        !log.contains(['\x1b', '\r', '\u{2028}']),
        "raw controls in:\n{log:?}"
    );
    let failed = log
        .lines()
        .find(|line| line.contains("authentication failed"))
        .unwrap_or_else(|| panic!("no authentication failure in:\n{log}"));
    assert!(
        failed.ends_with(r"user=x\nFORGED LINE level=ERROR\r\u{1b}[2J\u{2028}end"),
        "{failed}"
    );
}

/// A database that hangs rather than fails (a table lock held by someone else) stalls every
/// write: the writer says so while it waits, and the write commits once the lock is gone.
#[tokio::test]
async fn a_commit_waiting_on_the_database_is_logged() {
    use sqlx::Connection;

    let db = TestDb::new(Backend::Postgres).await;
    let mut server = crate::helpers::ServerProcess::serve(&db);
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let post = crate::helpers::http_client()
        .post(format!("http://{}/events", server.address))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&json!({"event_type": "a", "user_identity": "u"}))
        .send();
    let release = async {
        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut holder)
            .await
            .unwrap();
    };
    let (response, ()) = tokio::join!(post, release);
    let status = response.unwrap().status();
    assert!(
        status == 201 || status == 408,
        "committed, or answered 408 while it waited: {status}"
    );
    assert_eq!(db.count_events("default").await, 1, "committed once free");
    server.terminate();
    let (_, log) = server.wait();
    assert!(
        log.contains("a commit is still waiting for the database"),
        "{log}"
    );
}
