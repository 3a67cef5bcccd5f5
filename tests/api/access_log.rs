//! The log audits itself: reads, erasures and token changes are recorded in the system log,
//! tenant `_system`, which only admins of every tenant read and nobody writes through the API.

use auditor::auth::Role;
use auditor::model::{TenantId, TenantScope};
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN, Backend, READER, TestApp, TestDb, WRITER, settings_for, spawn_app, spawn_with,
};
use crate::integrity::verify;

async fn system_log(app: &TestApp) -> Vec<Value> {
    app.get_ok("/events?tenant=_system&limit=1000").await["events"]
        .as_array()
        .unwrap()
        .clone()
}

async fn reads_are_recorded_in_the_system_log_which_only_global_admins_read(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme_admin = ("acme-admin", "acme-admin-password-1");
    app.add_user_in(
        acme_admin.0,
        Role::Admin,
        TenantScope::One(TenantId::new("acme")),
        acme_admin.1,
    )
    .await;
    let event = app
        .record(json!({"event_type": "x", "user_identity": "alice"}))
        .await;
    let query = app
        .get("/events?event_type=x&user_identity=alice", READER)
        .await;
    assert_eq!(query.status(), 200);
    let id = event["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/events/{id}"), READER).await.status(),
        200
    );

    let records = system_log(&app).await;
    let by_reader: Vec<&Value> = records
        .iter()
        .filter(|r| r["recorded_by"] == "reader")
        .collect();
    assert_eq!(by_reader.len(), 2, "{records:?}");
    let query = &by_reader[0];
    assert_eq!(query["event_type"], "audit.access");
    assert_eq!(query["action"], "read");
    assert_eq!(query["event_data"]["operation"], "query");
    assert_eq!(query["event_data"]["tenant"], "default");
    assert_eq!(query["event_data"]["filters"], json!({"event_type": "x"}));
    assert_eq!(
        query["event_data"]["personal_filters"],
        json!(["user_identity"])
    );
    assert_eq!(query["event_data"]["returned"], 1);
    assert_eq!(by_reader[1]["event_data"]["operation"], "get");
    assert_eq!(by_reader[1]["event_data"]["id"], id);
    assert!(
        !json!(records).to_string().contains("alice"),
        "no searched-for value is kept"
    );

    // Read only by admins of every tenant; written by nobody through the API.
    for who in [READER, acme_admin] {
        assert_eq!(
            app.get("/events?tenant=_system", who).await.status(),
            403,
            "{who:?}"
        );
    }
    let forged = app
        .post_json(
            "/events?tenant=_system",
            ADMIN,
            &json!({"event_type": "x", "user_identity": "u"}),
        )
        .await;
    assert_eq!(forged.status(), 403);
    assert_eq!(
        app.post_json(
            "/events?tenant=_system",
            WRITER,
            &json!({"event_type": "x", "user_identity": "u"})
        )
        .await
        .status(),
        403
    );
    assert_eq!(
        app.get("/logs/_system/checkpoint", READER).await.status(),
        404
    );

    // Erasures and token changes too.
    let (status, _) = {
        let response = app
            .post_json(
                &format!("/events/{id}/erase"),
                ADMIN,
                &json!({"reason": "r"}),
            )
            .await;
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 201);
    let created = app
        .post_json(
            "/admin/tokens",
            ADMIN,
            &json!({"name": "svc", "scopes": ["events:write"]}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let operations: Vec<Value> = system_log(&app)
        .await
        .iter()
        .map(|r| r["event_data"]["operation"].clone())
        .collect();
    assert!(operations.contains(&json!("erase")), "{operations:?}");
    assert!(
        operations.contains(&json!("token.create")),
        "{operations:?}"
    );

    let report = verify(&app, &[]);
    let out = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{out}");
    assert!(out.contains("ok: tenant _system:"), "{out}");
}

/// With `audit_reads = false`, reads are not recorded; erasures still are.
async fn reads_go_unrecorded_when_turned_off(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.audit_reads = false;
    let app = spawn_with(db, settings).await;
    let event = app
        .record(json!({"event_type": "x", "user_identity": "u"}))
        .await;
    assert_eq!(app.get("/events", ADMIN).await.status(), 200);
    let id = event["id"].as_str().unwrap();
    let erased = app
        .post_json(
            &format!("/events/{id}/erase"),
            ADMIN,
            &json!({"reason": "r"}),
        )
        .await;
    assert_eq!(erased.status(), 201);
    let operations: Vec<Value> = system_log(&app)
        .await
        .iter()
        .map(|r| r["event_data"]["operation"].clone())
        .collect();
    assert_eq!(operations, [json!("erase")]);
}

/// A read whose record cannot be written is not answered with the events: nothing is read
/// unrecorded.
async fn a_read_that_cannot_be_recorded_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    app.record(json!({"event_type": "secret", "user_identity": "alice"}))
        .await;
    app.db.refuse_inserts("_system").await;
    let response = app.get("/events?event_type=secret", READER).await;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert!(status >= 500, "{status} {body}");
    assert!(!body.contains("alice"), "{body}");
    // Writing the tenant's own log still works.
    let written = app
        .post_json(
            "/events",
            WRITER,
            &json!({"event_type": "after", "user_identity": "bob"}),
        )
        .await;
    assert_eq!(written.status(), 201);
}

/// A credential change is recorded before it is made: when the record cannot be written, the
/// change is not made; when the change fails after its record, a second record says so.
async fn credential_changes_are_recorded_before_they_are_made(backend: Backend) {
    let app = spawn_app(backend).await;
    let create = |name: &str| json!({"name": name, "tenant": "acme", "scopes": ["events:read"]});
    assert_eq!(
        app.post_json("/admin/tokens", ADMIN, &create("first"))
            .await
            .status(),
        201
    );
    // The same name again: refused, and recorded as tried and failed.
    assert_eq!(
        app.post_json("/admin/tokens", ADMIN, &create("first"))
            .await
            .status(),
        409
    );
    let records: Vec<Value> = system_log(&app)
        .await
        .into_iter()
        .filter(|r| r["event_data"]["operation"] == "token.create")
        .collect();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records[0]["outcome"].is_null() && records[1]["outcome"].is_null());
    assert_eq!(records[2]["outcome"], "failure");
    assert!(
        records[2]["event_data"]["error"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );

    // Revoking twice changes one thing, once.
    for _ in 0..2 {
        let revoked = app
            .request(reqwest::Method::DELETE, "/admin/tokens/first", Some(ADMIN))
            .send()
            .await
            .unwrap();
        assert_eq!(revoked.status(), 200);
    }
    let revocations = system_log(&app)
        .await
        .into_iter()
        .filter(|r| r["event_data"]["operation"] == "token.revoke")
        .count();
    assert_eq!(revocations, 1);

    // A system log that takes no record: the token is not made.
    app.db.refuse_inserts("_system").await;
    let refused = app
        .post_json("/admin/tokens", ADMIN, &create("unrecorded"))
        .await;
    assert!(refused.status().as_u16() >= 500, "{}", refused.status());
    let tokens: Value = app.get("/admin/tokens", ADMIN).await.json().await.unwrap();
    assert!(
        !tokens.to_string().contains("unrecorded"),
        "a token made without its record: {tokens}"
    );
}

/// `auditor export` (every event of every tenant) and an amendment that shows the original's
/// fields are reads, recorded as such.
async fn exports_and_amendments_that_show_the_original_are_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let event = app
        .record(json!({"event_type": "x", "user_identity": "alice"}))
        .await;
    let id = event["id"].as_str().unwrap();
    let amended = app
        .request(
            reqwest::Method::PUT,
            &format!("/update_log/{id}"),
            Some(ADMIN),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(amended.status(), 201);
    let exported = crate::cli::auditor(&app.db.url, &["export"], "");
    assert!(exported.status.success());
    let operations: Vec<Value> = system_log(&app)
        .await
        .iter()
        .map(|r| r["event_data"]["operation"].clone())
        .collect();
    assert!(operations.contains(&json!("amend")), "{operations:?}");
    assert!(operations.contains(&json!("export")), "{operations:?}");
}

crate::both_backends!(
    reads_are_recorded_in_the_system_log_which_only_global_admins_read,
    reads_go_unrecorded_when_turned_off,
    a_read_that_cannot_be_recorded_is_refused,
    credential_changes_are_recorded_before_they_are_made,
    exports_and_amendments_that_show_the_original_are_recorded,
);
