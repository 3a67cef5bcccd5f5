//! Start-up, restart, readiness and shutdown.

use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, TestDb, settings_for, spawn_app, spawn_with};

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

async fn shutdown_is_clean_and_stops_serving(backend: Backend) {
    let mut app = spawn_app(backend).await;
    app.record(json!({"event_type": "a", "user_identity": "u"}))
        .await;
    app.stop().await.expect("graceful stop");
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
