//! Authentication on every route but health checks, and what each role may do.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, READER, TestDb, WRITER, spawn_app};

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

async fn a_removed_user_is_refused_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    // Authenticate once so the credential is cached, then remove the user behind the server's back.
    assert_eq!(app.get("/events", READER).await.status(), 200);
    assert_eq!(app.get("/events", READER).await.status(), 200);
    app.remove_user(READER.0).await;
    assert_eq!(app.get("/events", READER).await.status(), 401);
}

async fn a_new_user_with_the_same_name_needs_the_new_password(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.get("/events", READER).await.status(), 200);
    app.remove_user(READER.0).await;
    app.add_user(READER.0, auditor::auth::Role::Reader, "another-password-2")
        .await;
    assert_eq!(
        app.get("/events", READER).await.status(),
        401,
        "old password no longer works"
    );
    assert_eq!(
        app.get("/events", (READER.0, "another-password-2"))
            .await
            .status(),
        200
    );
}

crate::both_backends!(
    every_route_but_health_needs_credentials,
    roles_allow_only_their_own_operations,
    a_removed_user_is_refused_at_once,
    a_new_user_with_the_same_name_needs_the_new_password,
);

/// A credential not (or no longer) in the cache, used by 64 connections at once, runs argon2
/// (19 MiB each) at most once per core at a time: memory stays bounded. Unbounded, the process
/// peaked at 1.3 GiB when a busy client's cache entry expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_uncached_logins_verify_a_few_at_a_time() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = crate::helpers::ServerProcess::serve(&db);
    let client = reqwest::Client::new();
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
