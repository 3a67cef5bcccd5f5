//! Tenants: every credential acts in one tenant or in all (`*`). A request acts in its
//! credential's tenant, or in the one its `tenant` query parameter names if the credential admits
//! it; each tenant has its own `seq`, chain, tree and checkpoints, and no query crosses tenants.

use auditor::auth::Role;
use auditor::model::{TenantId, TenantScope};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, TestApp, spawn_app};
use crate::integrity::verify;

const ACME_WRITER: (&str, &str) = ("acme-writer", "acme-writer-password-1");
const ACME_READER: (&str, &str) = ("acme-reader", "acme-reader-password-1");

async fn with_acme_users(backend: Backend) -> TestApp {
    let app = spawn_app(backend).await;
    let acme = TenantScope::One(TenantId::new("acme"));
    app.add_user_in(ACME_WRITER.0, Role::Writer, acme.clone(), ACME_WRITER.1)
        .await;
    app.add_user_in(ACME_READER.0, Role::Reader, acme, ACME_READER.1)
        .await;
    app
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn record(app: &TestApp, path: &str, who: (&str, &str)) -> (u16, Value) {
    let body = json!({"event_type": "t", "user_identity": "u"});
    status_and_body(app.post_json(path, who, &body).await).await
}

async fn events(app: &TestApp, path: &str, who: (&str, &str)) -> (u16, Vec<Value>) {
    let (status, body) = status_and_body(app.get(path, who).await).await;
    let events = body["events"].as_array().cloned().unwrap_or_default();
    (status, events)
}

async fn credentials_act_in_their_tenant_and_no_other(backend: Backend) {
    let app = with_acme_users(backend).await;

    // A one-tenant writer records in its tenant, named or not; naming another is 403.
    let (status, first) = record(&app, "/events", ACME_WRITER).await;
    assert_eq!(
        (status, &first["tenant"], &first["seq"]),
        (201, &json!("acme"), &json!(1))
    );
    let (status, second) = record(&app, "/events?tenant=acme", ACME_WRITER).await;
    assert_eq!((status, &second["seq"]), (201, &json!(2)));
    let (status, refused) = record(&app, "/events?tenant=default", ACME_WRITER).await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (403, &json!("forbidden")),
        "{refused}"
    );

    // A credential of every tenant acts in `default` unless it names another.
    let (status, own) = record(&app, "/events", ADMIN).await;
    assert_eq!(
        (status, &own["tenant"], &own["seq"]),
        (201, &json!("default"), &json!(1))
    );
    let (status, named) = record(&app, "/events?tenant=globex", ADMIN).await;
    assert_eq!(
        (status, &named["tenant"], &named["seq"]),
        (201, &json!("globex"), &json!(1))
    );

    // Reads stay in the tenant.
    let (status, seen) = events(&app, "/events", ACME_READER).await;
    assert_eq!(status, 200);
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|e| e["tenant"] == "acme"));
    let (status, _) = events(&app, "/events?tenant=default", ACME_READER).await;
    assert_eq!(status, 403);
    let other = format!("/events/{}", own["id"].as_str().unwrap());
    assert_eq!(app.get(&other, ACME_READER).await.status(), 404);
    let (_, seen) = events(&app, "/events?tenant=acme&limit=10", ADMIN).await;
    assert_eq!(seen.len(), 2);
    let (_, seen) = events(&app, "/events", ADMIN).await;
    assert_eq!(seen.len(), 1, "the admin's own default tenant");

    // Tenant names are checked, and named once.
    for (path, message) in [
        ("/events?tenant=Not%20A%20Tenant", "is not a tenant name"),
        ("/events?tenant=", "is not a tenant name"),
        ("/events?tenant=acme&tenant=default", "more than once"),
    ] {
        let (status, body) = status_and_body(app.get(path, ADMIN).await).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["field"], "tenant", "{path}: {body}");
        assert!(body.to_string().contains(message), "{path}: {body}");
    }

    // Each tenant's log is its own: checkpoints and tiles by its name.
    let issued = app
        .request(Method::POST, "/checkpoints?tenant=acme", Some(ADMIN))
        .send()
        .await
        .unwrap();
    // 200 when the background checkpointer, which signs a tenant's first events within a
    // second, got there first: either way the latest checkpoint covers them.
    assert!(
        [200, 201].contains(&issued.status().as_u16()),
        "{}",
        issued.status()
    );
    let note = issued.json::<Value>().await.unwrap()["note"].clone();
    assert!(
        note.as_str()
            .unwrap()
            .starts_with("auditor.test/log/acme\n2\n"),
        "{note}"
    );
    assert_eq!(
        app.get("/logs/acme/checkpoint", ACME_READER).await.status(),
        200
    );
    assert_eq!(app.get("/logs/acme/checkpoint", ADMIN).await.status(), 200);
    assert_eq!(
        app.get("/logs/default/checkpoint", ACME_READER)
            .await
            .status(),
        404
    );
    let (status, _) = record(&app, "/checkpoints?tenant=acme", ACME_WRITER).await;
    assert_eq!(status, 403, "a writer may not issue checkpoints");

    let report = verify(&app, &[]);
    let out = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{out}");
    for tenant in ["acme", "default", "globex"] {
        assert!(out.contains(&format!("ok: tenant {tenant}:")), "{out}");
    }
}

/// Writers of several tenants at once: each tenant's `seq` runs 1, 2, … without a gap, every
/// event is in the tenant it was sent to, and every log verifies.
async fn concurrent_writers_of_several_tenants_keep_each_log_whole(backend: Backend) {
    let app = spawn_app(backend).await;
    let tenants = ["t1", "t2", "t3"];
    let mut tasks = Vec::new();
    for tenant in tenants {
        for writer in 0..2 {
            let requests: Vec<_> = (0..15)
                .map(|i| {
                    app.request(
                        Method::POST,
                        &format!("/events?tenant={tenant}"),
                        Some(ADMIN),
                    )
                    .json(&json!({"event_type": "t", "user_identity": format!("{writer}-{i}")}))
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                for request in requests {
                    assert_eq!(request.send().await.unwrap().status(), 201);
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    for tenant in tenants {
        let (_, seen) = events(
            &app,
            &format!("/events?tenant={tenant}&order=asc&limit=100"),
            ADMIN,
        )
        .await;
        let seqs: Vec<i64> = seen.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (1..=30).collect::<Vec<_>>(), "{tenant}");
        assert!(seen.iter().all(|e| e["tenant"] == tenant));
    }
    let report = verify(&app, &[]);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stdout)
    );
}

crate::both_backends!(
    credentials_act_in_their_tenant_and_no_other,
    concurrent_writers_of_several_tenants_keep_each_log_whole,
);
