//! Every route × every kind of credential → the exact status. The requests act in tenant
//! `acme` (`?tenant=acme`, or its name in the path); the tokens belong to `acme` unless said.
//! The JWTs are signed by the test's identity provider (`idp`); they act in `acme` unless said.

use jsonwebtoken::Algorithm;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, TestApp, TestDb, settings_for, spawn_with};
use crate::idp::{self, IdentityProvider, SigningKey, claims};

/// How a request authenticates.
#[derive(Debug, Clone)]
enum Credential {
    None,
    MalformedHeader,
    WrongPassword,
    Token(String),
}

/// One route: method, path (tenant named), body, and the scope it needs.
struct Route {
    method: Method,
    path: String,
    body: Option<Value>,
    ndjson: bool,
    scope: &'static str,
    /// The status with a credential that has the scope.
    allowed: &'static [u16],
    /// Which credentials with the scope act on it: a change that can be made once is made by
    /// one of them, on a target of its own.
    acting: Acting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acting {
    Both,
    TokenOnly,
    JwtOnly,
}

fn route(
    method: Method,
    path: String,
    body: Option<Value>,
    scope: &'static str,
    allowed: &'static [u16],
) -> Route {
    Route {
        method,
        path,
        body,
        ndjson: false,
        scope,
        allowed,
        acting: Acting::Both,
    }
}

async fn token(
    app: &TestApp,
    name: &str,
    tenant: &str,
    scopes: &[&str],
    expires: Option<u64>,
) -> String {
    let mut body = json!({"name": name, "tenant": tenant, "scopes": scopes});
    if let Some(secs) = expires {
        body["expires_in_secs"] = json!(secs);
    }
    let created: Value = app
        .post_json("/admin/tokens", ADMIN, &body)
        .await
        .json()
        .await
        .unwrap();
    created["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned()
}

async fn send(app: &TestApp, route: &Route, credential: &Credential) -> u16 {
    let mut request = app.request(route.method.clone(), &route.path, None);
    request = match credential {
        Credential::None => request,
        Credential::MalformedHeader => request.header("authorization", "Basic !!!not-base64"),
        Credential::WrongPassword => request.basic_auth(ADMIN.0, Some("wrong-password")),
        Credential::Token(token) => request.bearer_auth(token),
    };
    if route.ndjson {
        let line = route
            .body
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        request = request
            .header("content-type", "application/x-ndjson")
            .body(line);
    } else if let Some(body) = &route.body {
        request = request.json(body);
    }
    request.send().await.unwrap().status().as_u16()
}

fn all_scopes() -> [&'static str; 5] {
    [
        "events:write",
        "events:read",
        "events:redact",
        "checkpoints:write",
        "admin",
    ]
}

async fn every_route_answers_every_credential_kind_exactly(backend: Backend) {
    let provider = IdentityProvider::start().await;
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    provider.configure(&mut settings);
    // Each route meets more refused credentials in a row than the sign-in limit allows.
    settings.auth.max_failures = 0;
    let app = spawn_with(db, settings).await;
    let jwt = provider.key("rsa");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let jwt_claims = claims("jwt-user", "acme", &all_scopes().join(" "));
    let jwt_with = |changes: Value| idp::changed(&jwt_claims, changes);
    let unpublished = SigningKey::generate("unpublished", Algorithm::ES256);
    let refused_jwts = [
        ("a JWT with alg none", idp::unsigned(&jwt_with(json!({})))),
        (
            "an HS256 JWT signed with the public key",
            idp::hs256_with_public_key(jwt, &jwt_with(json!({}))),
        ),
        (
            "a JWT of another issuer",
            jwt.sign(&jwt_with(json!({"iss": "https://evil.test/"}))),
        ),
        (
            "a JWT for another audience",
            jwt.sign(&jwt_with(json!({"aud": "another-api"}))),
        ),
        (
            "an expired JWT",
            jwt.sign(&jwt_with(json!({"exp": now - 600}))),
        ),
        (
            "a JWT not yet valid",
            jwt.sign(&jwt_with(json!({"nbf": now + 600}))),
        ),
        (
            "a JWT of an unknown kid",
            unpublished.sign(&jwt_with(json!({}))),
        ),
        (
            "a JWT without a tenant claim",
            jwt.sign(&jwt_with(json!({"tenant": null}))),
        ),
    ];
    let other_tenant_jwt = provider
        .key("ed")
        .sign(&jwt_with(json!({"tenant": "globex"})));
    let record = |event_type: &str, user: &str| {
        let body = json!({"event_type": event_type, "user_identity": user, "event_data": {"n": 1}});
        let app = &app;
        async move {
            let response = app.post_json("/events?tenant=acme", ADMIN, &body).await;
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let mut targets = Vec::new();
    for i in 0..64 {
        targets.push(record("t", &format!("subject-{i}")).await);
    }
    let issued = app
        .request(Method::POST, "/checkpoints?tenant=acme", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);

    let all = all_scopes();
    let expired = token(&app, "expired", "acme", &all, Some(1)).await;
    let revoked = token(&app, "revoked", "acme", &all, None).await;
    let revoke = app
        .request(Method::DELETE, "/admin/tokens/revoked", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    let other_tenant = token(&app, "globex", "globex", &all, None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;

    // Each route that changes something gets its own target, per credential that may act.
    let mut next_target = targets.into_iter();
    let mut routes = Vec::new();
    let read_routes = [
        "/events?tenant=acme".to_owned(),
        "/events/query?user_identity=subject-0&tenant=acme".to_owned(),
        "/get_log/customer/subject-0?tenant=acme".to_owned(),
        "/checkpoint?tenant=acme".to_owned(),
        "/checkpoints/latest?tenant=acme".to_owned(),
        "/checkpoints/64?tenant=acme".to_owned(),
        "/checkpoints/consistency?from=1&to=64&tenant=acme".to_owned(),
        "/keys?tenant=acme".to_owned(),
        "/logs/acme/checkpoint".to_owned(),
        "/logs/acme/tile/0/000.p/64".to_owned(),
    ];
    let first = next_target.next().unwrap();
    for path in read_routes {
        routes.push(route(Method::GET, path, None, "events:read", &[200]));
    }
    for path in [
        format!("/events/{first}?tenant=acme"),
        format!("/events/{first}/proof?tenant=acme"),
        format!("/get_log/event/{first}?tenant=acme"),
    ] {
        routes.push(route(Method::GET, path, None, "events:read", &[200]));
    }
    let event = json!({"event_type": "t", "user_identity": "u"});
    routes.push(route(
        Method::POST,
        "/events?tenant=acme".into(),
        Some(event.clone()),
        "events:write",
        &[201],
    ));
    routes.push(Route {
        ndjson: true,
        ..route(
            Method::POST,
            "/events/bulk?tenant=acme".into(),
            Some(event),
            "events:write",
            &[200],
        )
    });
    routes.push(route(
        Method::POST,
        "/create_log/u1?tenant=acme".into(),
        Some(json!({"entity": "e", "event_type": "t"})),
        "events:write",
        &[201],
    ));
    routes.push(route(
        Method::PUT,
        format!("/update_log/{first}?tenant=acme"),
        Some(json!({})),
        "events:write",
        &[201],
    ));
    routes.push(route(
        Method::POST,
        "/checkpoints?tenant=acme".into(),
        None,
        "checkpoints:write",
        &[200, 201],
    ));
    routes.push(route(
        Method::GET,
        "/admin/tokens?tenant=acme".into(),
        None,
        "admin",
        &[200],
    ));
    for (acting, subject) in [(Acting::TokenOnly, 63), (Acting::JwtOnly, 62)] {
        routes.push(Route {
            acting,
            ..route(
                Method::POST,
                "/admin/tokens?tenant=acme".into(),
                Some(json!({"name": format!("made-{subject}"), "scopes": ["events:read"]})),
                "admin",
                &[201],
            )
        });
        for (kind, template) in [
            ("redact", "/events/{}/redact"),
            ("erase", "/events/{}/erase"),
            ("delete", "/delete_log/{}"),
        ] {
            let target = next_target.next().unwrap();
            let method = if kind == "delete" {
                Method::DELETE
            } else {
                Method::POST
            };
            routes.push(Route {
                acting,
                ..route(
                    method,
                    format!("{}?tenant=acme", template.replace("{}", &target)),
                    Some(json!({"reason": "matrix"})),
                    "events:redact",
                    &[201],
                )
            });
        }
        routes.push(Route {
            acting,
            ..route(
                Method::POST,
                "/erasures?tenant=acme".into(),
                Some(json!({"user_identity": format!("subject-{subject}"), "reason": "matrix"})),
                "events:redact",
                &[201],
            )
        });
    }

    let mut failures = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let lacking: Vec<&str> = all.iter().copied().filter(|s| *s != route.scope).collect();
        let without = token(&app, &format!("without-{i}"), "acme", &lacking, None).await;
        let with = token(&app, &format!("with-{i}"), "acme", &[route.scope], None).await;
        let scope_jwt = |scopes: &[&str]| {
            provider
                .key("ec")
                .sign(&jwt_with(json!({"scope": scopes.join(" ")})))
        };
        let mut cases: Vec<(&str, Credential, Vec<u16>)> = vec![
            ("no credentials", Credential::None, vec![401]),
            ("a malformed header", Credential::MalformedHeader, vec![401]),
            ("a wrong password", Credential::WrongPassword, vec![401]),
            (
                "an unknown token",
                Credential::Token(format!("auditor_{}", "A".repeat(43))),
                vec![401],
            ),
            (
                "an expired token",
                Credential::Token(expired.clone()),
                vec![401],
            ),
            (
                "a revoked token",
                Credential::Token(revoked.clone()),
                vec![401],
            ),
            // A log named in the path is hidden from others (404); elsewhere the tenant is refused.
            (
                "another tenant's token",
                Credential::Token(other_tenant.clone()),
                vec![if route.path.starts_with("/logs/") {
                    404
                } else {
                    403
                }],
            ),
            (
                "a token without the scope",
                Credential::Token(without),
                vec![403],
            ),
        ];
        if route.acting != Acting::JwtOnly {
            cases.push((
                "a token with the scope",
                Credential::Token(with),
                route.allowed.to_vec(),
            ));
        }
        for (what, token) in &refused_jwts {
            cases.push((what, Credential::Token(token.clone()), vec![401]));
        }
        cases.extend([
            (
                "a JWT of another tenant",
                Credential::Token(other_tenant_jwt.clone()),
                vec![if route.path.starts_with("/logs/") {
                    404
                } else {
                    403
                }],
            ),
            (
                "a JWT without the scope",
                Credential::Token(scope_jwt(&lacking)),
                vec![403],
            ),
        ]);
        if route.acting != Acting::TokenOnly {
            cases.push((
                "a JWT with the scope",
                Credential::Token(scope_jwt(&[route.scope])),
                route.allowed.to_vec(),
            ));
        }
        for (what, credential, expected) in cases {
            let status = send(&app, route, &credential).await;
            if !expected.contains(&status) {
                failures.push(format!(
                    "{} {} with {what}: {status}, expected {expected:?}",
                    route.method, route.path
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

crate::both_backends!(every_route_answers_every_credential_kind_exactly);
