//! API tokens: made by an admin (CLI or HTTP), shown once, sent as `Authorization: Bearer`;
//! they act only in their tenant and with their scopes, and a revoked or expired one is refused
//! at once, by every instance.

use std::time::Instant;

use auditor::auth::Role;
use auditor::model::{TenantId, TenantScope};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, TestApp, WRITER, settings_for, spawn_app, spawn_with};

async fn create(app: &TestApp, who: (&str, &str), body: Value) -> (u16, Value) {
    let response = app.post_json("/admin/tokens", who, &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn with_token(app: &TestApp, method: Method, path: &str, token: &str) -> (u16, Value) {
    let mut request = app.request(method.clone(), path, None).bearer_auth(token);
    if method == Method::POST {
        request = request.json(&json!({"event_type": "t", "user_identity": "u"}));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn tokens_act_with_their_scopes_in_their_tenant_until_revoked(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, created) = create(
        &app,
        ADMIN,
        json!({"name": "billing", "tenant": "acme", "scopes": ["events:write"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(
        token.starts_with("auditor_") && token.len() == 51,
        "{token}"
    );
    assert_eq!(
        (
            &created["tenant"],
            &created["scopes"],
            &created["expires_at"]
        ),
        (&json!("acme"), &json!("events:write"), &Value::Null)
    );

    let (status, event) = with_token(&app, Method::POST, "/events", &token).await;
    assert_eq!(status, 201, "{event}");
    assert_eq!(
        (&event["tenant"], &event["recorded_by"]),
        (&json!("acme"), &json!("token:billing"))
    );
    assert_eq!(
        with_token(&app, Method::GET, "/events", &token).await.0,
        403,
        "no events:read"
    );
    let (status, body) = with_token(&app, Method::POST, "/events?tenant=default", &token).await;
    assert_eq!(status, 403, "{body}");

    // Scopes also as one space-separated string, as RFC 9068 writes them.
    let (_, reader) = create(
        &app,
        ADMIN,
        json!({"name": "auditors", "tenant": "acme", "scopes": "events:read"}),
    )
    .await;
    let reader = reader["token"].as_str().unwrap().to_owned();
    let (status, page) = with_token(&app, Method::GET, "/events", &reader).await;
    assert_eq!(
        (status, page["events"].as_array().map(Vec::len)),
        (200, Some(1))
    );

    // Listed without secrets; only admins manage tokens.
    let listed = app.get("/admin/tokens", ADMIN).await.text().await.unwrap();
    assert!(
        listed.contains("\"billing\"") && listed.contains("\"auditors\""),
        "{listed}"
    );
    assert!(!listed.contains(&token) && !listed.contains(&reader));
    assert!(!listed.contains("secret_hash"));
    assert_eq!(app.get("/admin/tokens", WRITER).await.status(), 403);
    assert_eq!(
        with_token(&app, Method::GET, "/admin/tokens", &reader)
            .await
            .0,
        403
    );

    // Bad requests name the field.
    for (body, status, field) in [
        (
            json!({"name": "x", "scopes": ["events:delete"]}),
            422,
            "scopes",
        ),
        (json!({"name": "x", "scopes": []}), 422, "scopes"),
        (
            json!({"name": "bad name", "scopes": ["events:read"]}),
            422,
            "name",
        ),
        (
            json!({"name": "x", "tenant": "Acme", "scopes": ["events:read"]}),
            422,
            "tenant",
        ),
        (
            json!({"name": "x", "scopes": ["events:read"], "expires_in_secs": 0}),
            422,
            "expires_in_secs",
        ),
        (
            json!({"name": "billing", "scopes": ["events:read"]}),
            409,
            "",
        ),
    ] {
        let (got, answer) = create(&app, ADMIN, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
        }
    }

    // Unknown or malformed tokens are refused like a wrong password.
    let unknown = format!("auditor_{}", "A".repeat(43));
    for bad in [unknown.as_str(), "nonsense", ""] {
        assert_eq!(
            with_token(&app, Method::GET, "/events", bad).await.0,
            401,
            "{bad}"
        );
    }

    // Revocation holds at once; revoking again answers the same.
    let revoke = |name: &str| {
        app.request(
            Method::DELETE,
            &format!("/admin/tokens/{name}"),
            Some(ADMIN),
        )
    };
    let revoked: Value = revoke("billing")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert_eq!(
        with_token(&app, Method::POST, "/events", &token).await.0,
        401
    );
    let again: Value = revoke("billing")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    assert_eq!(revoke("nobody").send().await.unwrap().status(), 404);

    // Expiry too.
    let (_, short) = create(
        &app,
        ADMIN,
        json!({"name": "short", "scopes": ["events:read"], "expires_in_secs": 1}),
    )
    .await;
    let short = short["token"].as_str().unwrap().to_owned();
    assert_eq!(
        with_token(&app, Method::GET, "/events", &short).await.0,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    assert_eq!(
        with_token(&app, Method::GET, "/events", &short).await.0,
        401
    );
}

/// An admin of one tenant makes, sees and revokes that tenant's tokens only.
async fn a_tenant_admin_manages_only_its_tenants_tokens(backend: Backend) {
    let app = spawn_app(backend).await;
    let acme_admin = ("acme-admin", "acme-admin-password-1");
    let acme = TenantScope::One(TenantId::new("acme"));
    app.add_user_in(acme_admin.0, Role::Admin, acme, acme_admin.1)
        .await;
    let (status, own) = create(
        &app,
        acme_admin,
        json!({"name": "a1", "scopes": ["events:write"]}),
    )
    .await;
    assert_eq!((status, &own["tenant"]), (201, &json!("acme")), "{own}");
    for tenant in ["*", "globex"] {
        let body = json!({"name": "a2", "tenant": tenant, "scopes": ["events:write"]});
        assert_eq!(create(&app, acme_admin, body).await.0, 403, "{tenant}");
    }
    let (status, _) = create(
        &app,
        ADMIN,
        json!({"name": "d1", "scopes": ["events:write"]}),
    )
    .await;
    assert_eq!(status, 201);
    let listed: Value = app
        .get("/admin/tokens", acme_admin)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a1"]);
    let other = app
        .request(Method::DELETE, "/admin/tokens/d1", Some(acme_admin))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

/// A token revoked through one instance is refused by another on the same database at once.
async fn a_revoked_token_is_refused_by_every_instance(backend: Backend) {
    let first = spawn_app(backend).await;
    let second = spawn_with(first.db.share(), settings_for(&first.db)).await;
    let (_, created) = create(
        &first,
        ADMIN,
        json!({"name": "svc", "scopes": ["events:write"]}),
    )
    .await;
    let token = created["token"].as_str().unwrap().to_owned();
    for app in [&first, &second] {
        assert_eq!(
            with_token(app, Method::POST, "/events", &token).await.0,
            201
        );
    }
    let revoked = first
        .request(Method::DELETE, "/admin/tokens/svc", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let at = Instant::now();
    assert_eq!(
        with_token(&second, Method::POST, "/events", &token).await.0,
        401
    );
    assert!(at.elapsed() < std::time::Duration::from_secs(1));
}

crate::both_backends!(
    tokens_act_with_their_scopes_in_their_tenant_until_revoked,
    a_tenant_admin_manages_only_its_tenants_tokens,
    a_revoked_token_is_refused_by_every_instance,
);

/// `auditor token create` prints the token alone on its last line; `list` never shows it;
/// `revoke` marks it revoked.
#[test]
fn tokens_are_managed_from_the_command_line() {
    use crate::cli::auditor;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());
    assert!(auditor(&url, &["migrate"], "").status.success());
    let created = auditor(
        &url,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--tenant",
            "*",
            "--scopes",
            "events:write,events:read",
            "--expires-in",
            "90d",
        ],
        "",
    );
    let out = String::from_utf8_lossy(&created.stdout).into_owned();
    assert!(
        created.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = out.lines().last().unwrap();
    assert!(token.starts_with("auditor_") && token.len() == 51, "{out}");

    let listed = auditor(&url, &["token", "list"], "");
    let list = String::from_utf8_lossy(&listed.stdout).into_owned();
    let line = list
        .lines()
        .find(|l| l.starts_with("ci "))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("active") && line.contains("events:write events:read"),
        "{line}"
    );
    assert!(!list.contains(token));

    let bad = auditor(
        &url,
        &[
            "token",
            "create",
            "--name",
            "x",
            "--tenant",
            "*",
            "--scopes",
            "events:delete",
        ],
        "",
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`events:delete` is not a scope"));

    assert!(
        auditor(&url, &["token", "revoke", "ci"], "")
            .status
            .success()
    );
    let listed = auditor(&url, &["token", "list"], "");
    let list = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.starts_with("ci ") && l.contains("revoked")),
        "{list}"
    );
    let missing = auditor(&url, &["token", "revoke", "nobody"], "");
    assert!(!missing.status.success());

    // Both changes are in the system log, by the command line's login.
    let exported = auditor(&url, &["export"], "");
    let log = String::from_utf8_lossy(&exported.stdout).into_owned();
    for operation in ["token.create", "token.revoke"] {
        let line = log
            .lines()
            .find(|line| line.contains(&format!("\"operation\":\"{operation}\"")))
            .unwrap_or_else(|| panic!("no {operation} in:\n{log}"));
        assert!(
            line.contains("\"tenant\":\"_system\"") && line.contains("\"recorded_by\":\"cli:"),
            "{line}"
        );
        assert!(!line.contains(token), "never the token");
    }
}
