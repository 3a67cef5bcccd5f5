//! Authentication on every route but health checks, and what each role may do.

use std::future::Future;
use std::time::{Duration, Instant};

use auditor::auth::Role;
use auditor::store::postgres::USERS_LISTENER_APPLICATION;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN, Backend, READER, TestApp, TestDb, WRITER, add_test_users, postgres_admin_url,
    settings_for, spawn_app, spawn_app_with_users_in_place, spawn_with,
};

const EVENT: &str = r#"{"event_type":"a","user_identity":"u"}"#;
const SOME_ID: &str = "01920000-0000-7000-8000-000000000000";

fn protected_routes() -> Vec<(Method, String)> {
    vec![
        (Method::POST, "/events".into()),
        (Method::GET, "/events".into()),
        (Method::GET, "/events/query?user_identity=u".into()),
        (Method::GET, format!("/events/{SOME_ID}")),
        (Method::POST, "/create_log/u1".into()),
        (Method::GET, "/get_log/customer/u1".into()),
        (Method::GET, format!("/get_log/event/{SOME_ID}")),
        (Method::PUT, format!("/update_log/{SOME_ID}")),
        (Method::DELETE, format!("/delete_log/{SOME_ID}")),
    ]
}

async fn every_route_but_health_needs_credentials(backend: Backend) {
    let app = spawn_app(backend).await;
    let bad_credentials = [None, Some(("admin", "wrong")), Some(("nobody", "secret"))];
    for (method, path) in protected_routes() {
        for who in bad_credentials {
            let response = app
                .request(method.clone(), &path, who)
                .header("content-type", "application/json")
                .body(EVENT)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 401, "{method} {path} as {who:?}");
            let challenge = response.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Basic realm="), "{challenge}");
        }
    }
    let garbled = app
        .request(Method::GET, "/events", None)
        .header("authorization", "Basic !!!not-base64")
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), 401);
    for path in ["/ping", "/healthz", "/readyz"] {
        let response = app.request(Method::GET, path, None).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

async fn roles_allow_only_their_own_operations(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({"event_type": "a", "user_identity": "u", "event_data": {"k": 1}});

    assert_eq!(app.post_json("/events", WRITER, &body).await.status(), 201);
    let response = app.get("/events", WRITER).await;
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "forbidden");
    assert_eq!(app.get("/get_log/customer/u", WRITER).await.status(), 403);

    assert_eq!(app.post_json("/events", READER, &body).await.status(), 403);
    assert_eq!(
        app.post_json(
            "/create_log/u",
            READER,
            &json!({"entity": "E", "event_type": "CREATE"})
        )
        .await
        .status(),
        403
    );
    assert_eq!(app.get("/events", READER).await.status(), 200);
    assert_eq!(
        app.get("/events/query?user_identity=u", READER)
            .await
            .status(),
        200
    );

    assert_eq!(app.post_json("/events", ADMIN, &body).await.status(), 201);
    assert_eq!(app.get("/events", ADMIN).await.status(), 200);

    let events = app.get_ok("/events").await;
    let id = events["events"][0]["id"].as_str().unwrap().to_owned();
    let delete = |who| {
        app.request(Method::DELETE, &format!("/delete_log/{id}"), Some(who))
            .send()
    };
    assert_eq!(delete(WRITER).await.unwrap().status(), 403);
    assert_eq!(delete(READER).await.unwrap().status(), 403);
    assert_eq!(delete(ADMIN).await.unwrap().status(), 201);

    let recorded = app.get_ok("/events?recorded_by=writer").await;
    assert_eq!(
        recorded["events"].as_array().unwrap().len(),
        1,
        "the writer's own event"
    );
}

/// Repeats `check` until it holds, failing if it does not within a second of `since`: the
/// longest a change to the users table may take to reach a server.
async fn within_a_second_of<F, Fut>(since: Instant, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if check().await {
            return;
        }
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "{what}: not within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The status of `method path` as `who`, sent with one event as the body (GETs ignore it).
async fn status(app: &TestApp, method: Method, path: &str, who: (&str, &str)) -> u16 {
    app.request(method, path, Some(who))
        .json(&json!({"event_type": "a", "user_identity": "u"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn a_removed_user_is_refused_within_a_second(backend: Backend) {
    let app = spawn_app(backend).await;
    // Authenticate twice so the user and the credential are both in memory, then remove the
    // user through another store, behind the server's back.
    assert_eq!(app.get("/events", READER).await.status(), 200);
    assert_eq!(app.get("/events", READER).await.status(), 200);
    app.remove_user(READER.0).await;
    let removed = Instant::now();
    within_a_second_of(removed, "the removed user refused", || async {
        app.get("/events", READER).await.status() == 401
    })
    .await;
    assert_eq!(
        app.get("/events", READER).await.status(),
        401,
        "and stays so"
    );
}

async fn a_new_user_with_the_same_name_needs_the_new_password(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.get("/events", READER).await.status(), 200);
    app.remove_user(READER.0).await;
    app.add_user(READER.0, Role::Reader, "another-password-2")
        .await;
    let replaced = Instant::now();
    within_a_second_of(replaced, "the old password refused", || async {
        app.get("/events", READER).await.status() == 401
    })
    .await;
    assert_eq!(
        app.get("/events", (READER.0, "another-password-2"))
            .await
            .status(),
        200
    );
}

/// Two servers over one database (two instances on PostgreSQL; two processes' worth of stores
/// on one SQLite file), and `auditor user remove` run as a third process.
async fn a_user_removed_with_the_cli_is_refused_by_every_instance_within_a_second(
    backend: Backend,
) {
    let first = spawn_app(backend).await;
    let second = spawn_with(first.db.share(), settings_for(&first.db)).await;
    for app in [&first, &second] {
        assert_eq!(app.get("/events", READER).await.status(), 200);
        assert_eq!(app.get("/events", READER).await.status(), 200);
    }
    let output = crate::cli::auditor(&first.db.url, &["user", "remove", READER.0], "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let removed = Instant::now();
    for app in [&first, &second] {
        within_a_second_of(removed, "the removed user refused", || async {
            app.get("/events", READER).await.status() == 401
        })
        .await;
    }
    for app in [&first, &second] {
        assert_eq!(app.get("/events", READER).await.status(), 401);
        assert_eq!(
            app.get("/events", WRITER).await.status(),
            403,
            "others unaffected"
        );
    }
}

/// An UPDATE by hand (psql, the sqlite3 shell) is seen like any other change.
async fn a_role_changed_in_the_database_takes_effect_within_a_second(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(status(&app, Method::POST, "/events", WRITER).await, 201);
    assert_eq!(status(&app, Method::GET, "/events", WRITER).await, 403);
    app.db
        .execute("UPDATE users SET role = 'reader' WHERE name = 'writer'")
        .await
        .unwrap();
    let changed = Instant::now();
    within_a_second_of(changed, "the new role applied", || async {
        status(&app, Method::POST, "/events", WRITER).await == 403
    })
    .await;
    assert_eq!(status(&app, Method::GET, "/events", WRITER).await, 200);
}

/// Once the users are in memory, requests do not read the table: with it renamed away (a
/// change of schema, not of users, so nothing is notified) every request still authenticates,
/// where a read would fail with "no such table". Requests go on for longer than the SQLite
/// poll and the PostgreSQL heartbeat, with appends in between.
async fn authentication_after_warm_up_does_not_read_the_users_table(backend: Backend) {
    let app = spawn_app_with_users_in_place(backend).await;
    assert_eq!(status(&app, Method::POST, "/events", WRITER).await, 201);
    assert_eq!(status(&app, Method::GET, "/events", READER).await, 200);
    assert_eq!(status(&app, Method::GET, "/events", ADMIN).await, 200);
    app.db
        .execute("ALTER TABLE users RENAME TO users_elsewhere")
        .await
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        assert_eq!(status(&app, Method::POST, "/events", WRITER).await, 201);
        assert_eq!(
            status(&app, Method::GET, "/events?limit=1", READER).await,
            200
        );
    }
    assert_eq!(
        status(&app, Method::GET, "/events", ("nobody", "secret")).await,
        401,
        "an unknown name is answered from memory too"
    );
    app.db
        .execute("ALTER TABLE users_elsewhere RENAME TO users")
        .await
        .unwrap();
}

/// Failed sign-ins of one name from one address are held back after `auth.max_failures`, even
/// with the right password, until the window ends; another name from there is not.
async fn failed_sign_ins_are_held_back_per_name_and_address(backend: Backend) {
    let db = TestDb::new(backend).await;
    match backend {
        Backend::Sqlite => add_test_users(&db.sqlite().await).await,
        Backend::Postgres => add_test_users(&db.postgres().await).await,
    }
    let mut settings = settings_for(&db);
    settings.auth.max_failures = 3;
    settings.auth.failure_window_secs = 2;
    let app = spawn_with(db, settings).await;
    for _ in 0..3 {
        assert_eq!(app.get("/events", (READER.0, "wrong")).await.status(), 401);
    }
    let held = app.get("/events", READER).await;
    assert_eq!(held.status(), 429, "the right password is not even tried");
    assert!(held.headers().contains_key("retry-after"));
    let body: Value = held.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests");
    assert_eq!(
        app.get("/events", ADMIN).await.status(),
        200,
        "another name"
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        app.get("/events", READER).await.status(),
        200,
        "the window ended"
    );
}

/// A credential over `limits.requests_per_sec` gets `429` with `Retry-After`; others do not.
async fn a_credential_over_its_request_rate_gets_429(backend: Backend) {
    let db = TestDb::new(backend).await;
    match backend {
        Backend::Sqlite => add_test_users(&db.sqlite().await).await,
        Backend::Postgres => add_test_users(&db.postgres().await).await,
    }
    let mut settings = settings_for(&db);
    settings.limits.requests_per_sec = 2;
    settings.limits.burst = 2;
    let app = spawn_with(db, settings).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = app.get("/events", READER).await;
        if response.status() == 429 {
            assert_eq!(response.headers()["retry-after"], "1");
        }
        statuses.push(response.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses[..2], [200, 200], "the burst passes");
    assert_eq!(
        app.get("/events", ADMIN).await.status(),
        200,
        "another credential"
    );
}

crate::both_backends!(
    failed_sign_ins_are_held_back_per_name_and_address,
    a_credential_over_its_request_rate_gets_429,
    every_route_but_health_needs_credentials,
    roles_allow_only_their_own_operations,
    a_removed_user_is_refused_within_a_second,
    a_new_user_with_the_same_name_needs_the_new_password,
    a_user_removed_with_the_cli_is_refused_by_every_instance_within_a_second,
    a_role_changed_in_the_database_takes_effect_within_a_second,
    authentication_after_warm_up_does_not_read_the_users_table,
);

/// When the users listener's connection is cut, a user removed meanwhile (whose notification
/// goes nowhere) is refused from the first request on, for as long as the listener cannot
/// listen again (new connections to the database are refused meanwhile); once it listens again,
/// requests are answered from memory again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_users_listener_does_not_let_a_removed_user_in() {
    use sqlx::Connection;
    // Every refusal here is a failed sign-in: no limit on them, so each is answered from the
    // users table (`401`), not held back (`429`).
    let db = TestDb::new(Backend::Postgres).await;
    add_test_users(&db.postgres().await).await;
    let mut settings = settings_for(&db);
    settings.auth.max_failures = 0;
    let app = spawn_with(db, settings).await;
    assert_eq!(app.get("/events", READER).await.status(), 200);
    assert_eq!(app.get("/events", READER).await.status(), 200);
    // Opened now: while connections are refused, these go on working. Only a connection to
    // another database may refuse connections to this one.
    let mut psql = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .unwrap();
    let strings = async |psql: &mut sqlx::PgConnection, sql: String| -> Vec<String> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(psql)
            .await
            .unwrap()
    };
    let database = strings(&mut psql, "SELECT current_database()::text".into()).await;
    let allow_connections = |allow: bool| {
        format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS {allow}",
            database[0]
        )
    };
    let listeners = format!(
        "SELECT pid::text FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = '{USERS_LISTENER_APPLICATION}'"
    );
    let pids = strings(&mut psql, listeners.clone()).await;
    assert_eq!(pids.len(), 1, "one listener per server: {pids:?}");

    strings(&mut admin, allow_connections(false)).await;
    // Waits (up to 5 s) until the backend is gone.
    let terminated = strings(
        &mut psql,
        format!("SELECT pg_terminate_backend({}, 5000)::text", pids[0]),
    )
    .await;
    assert_eq!(terminated, ["true"]);
    strings(&mut psql, "DELETE FROM users WHERE name = 'reader'".into()).await;
    let (started, mut refused) = (Instant::now(), 0);
    while started.elapsed() < Duration::from_millis(1500) {
        // 401 from the table; or 500 when the server's pool wanted a new connection, which the
        // database refuses for now. Never 200.
        let status = app.get("/events", READER).await.status();
        assert!(
            status == 401 || status == 500,
            "the removed user got {status}"
        );
        refused += u32::from(status == 401);
    }
    assert!(refused > 0, "found missing in the table");
    assert!(strings(&mut psql, listeners.clone()).await.is_empty());

    // Back: a new listener that has listened and proved its connection with a heartbeat...
    strings(&mut admin, allow_connections(true)).await;
    let listening = format!("{listeners} AND state = 'idle' AND query = 'SELECT 1'");
    let mut back = Vec::new();
    for _ in 0..500 {
        back = strings(&mut psql, listening.clone()).await;
        if back.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(back.len(), 1, "listening again");
    // ...and the users in memory again (the table renamed away, as above).
    assert_eq!(app.get("/events", ADMIN).await.status(), 200);
    strings(
        &mut psql,
        "ALTER TABLE users RENAME TO users_elsewhere".into(),
    )
    .await;
    assert_eq!(app.get("/events", ADMIN).await.status(), 200);
    assert_eq!(app.get("/events", READER).await.status(), 401);
}

/// A credential not (or no longer) in the cache, used by 64 connections at once, runs argon2
/// (19 MiB each) at most once per core at a time: memory stays bounded. Unbounded, the process
/// peaked at 1.3 GiB when a busy client's cache entry expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_uncached_logins_verify_a_few_at_a_time() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = crate::helpers::ServerProcess::serve(&db);
    let client = crate::helpers::http_client();
    let url = format!("http://{}/events?limit=1", server.address);
    let logins = (0..64).map(|_| client.get(&url).basic_auth(ADMIN.0, Some(ADMIN.1)).send());
    for response in futures::future::join_all(logins).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        peak_kib < 400 * 1024,
        "peak RSS {peak_kib} KiB: argon2 ran for too many requests at once"
    );
}
