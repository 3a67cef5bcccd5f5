//! OAuth 2.0 / OIDC bearer JWTs: signed in the test with locally made keys, the key set served
//! by the test (`idp`), every refusal the issue lists, key rotation without a restart, and the
//! key set's fetches rate-limited.

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, TestApp, TestDb, settings_for, spawn_with};
use crate::idp::{self, IdentityProvider, SigningKey, claims};

async fn spawn_with_provider(backend: Backend) -> (TestApp, IdentityProvider) {
    spawn_with_provider_and(backend, |_| {}).await
}

/// The same, with `adjust` applied to the settings first.
async fn spawn_with_provider_and(
    backend: Backend,
    adjust: impl FnOnce(&mut auditor::config::Settings),
) -> (TestApp, IdentityProvider) {
    let provider = IdentityProvider::start().await;
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    provider.configure(&mut settings);
    adjust(&mut settings);
    (spawn_with(db, settings).await, provider)
}

/// More failures from one address than the sign-in limit lets through.
fn without_failure_limit(settings: &mut auditor::config::Settings) {
    settings.auth.max_failures = 0;
}

async fn post_event(app: &TestApp, path: &str, token: &str, body: &Value) -> reqwest::Response {
    app.request(Method::POST, path, None)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn get_with(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.request(Method::GET, path, None)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn every_accepted_algorithm_acts_as_its_subject_in_its_tenant(backend: Backend) {
    let (app, provider) = spawn_with_provider(backend).await;
    for kid in ["rsa", "pss", "ec", "ed"] {
        let subject = format!("alice-{kid}@example.com");
        let token =
            provider
                .key(kid)
                .sign(&claims(&subject, "acme", "openid events:write events:read"));
        let body = json!({"event_type": "jwt.signed", "user_identity": kid});
        let response = post_event(&app, "/events", &token, &body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{kid}");
        let event: Value = response.json().await.unwrap();
        assert_eq!(event["recorded_by"], json!(subject), "{kid}");

        let mine = get_with(&app, &format!("/events?user_identity={kid}"), &token).await;
        assert_eq!(mine.status(), StatusCode::OK);
        let found: Value = mine.json().await.unwrap();
        assert_eq!(found["events"].as_array().unwrap().len(), 1, "{found}");
    }
    // The events are acme's, not the default tenant's.
    let default = app.get("/events?event_type=jwt.signed", ADMIN).await;
    let default: Value = default.json().await.unwrap();
    assert_eq!(default["events"], json!([]));
    let acme = app
        .get("/events?event_type=jwt.signed&tenant=acme", ADMIN)
        .await;
    let acme: Value = acme.json().await.unwrap();
    assert_eq!(acme["events"].as_array().unwrap().len(), 4);

    // A one-tenant JWT may not name another tenant; a `*` JWT may.
    let acme_token = provider
        .key("rsa")
        .sign(&claims("bob", "acme", "events:read"));
    let other = get_with(&app, "/events?tenant=globex", &acme_token).await;
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    let all_token = provider
        .key("ed")
        .sign(&claims("carol", "*", "events:read"));
    let other = get_with(&app, "/events?tenant=acme", &all_token).await;
    assert_eq!(other.status(), StatusCode::OK);
    // The scopes are the token's: a reader's JWT may not write.
    let written = post_event(
        &app,
        "/events",
        &acme_token,
        &json!({"event_type": "t", "user_identity": "u"}),
    )
    .await;
    assert_eq!(written.status(), StatusCode::FORBIDDEN);
}

/// Every token the issue says must be refused, each with `401`, and nothing recorded.
async fn forged_expired_and_foreign_tokens_are_refused(backend: Backend) {
    let (app, provider) = spawn_with_provider_and(backend, without_failure_limit).await;
    let rsa = provider.key("rsa");
    let valid = claims("mallory", "acme", "events:write events:read");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let with = |changes: Value| idp::changed(&valid, changes);
    let unpublished = SigningKey::generate("unpublished", Algorithm::RS256);
    let tampered = {
        let token = rsa.sign(&valid);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            with(json!({"tenant": "*", "scope": "admin"})).to_string(),
        );
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let cases = [
        ("alg none", idp::unsigned(&valid)),
        (
            "HS256 signed with the public key",
            idp::hs256_with_public_key(rsa, &valid),
        ),
        (
            "wrong issuer",
            rsa.sign(&with(json!({"iss": "https://evil.test/"}))),
        ),
        (
            "wrong audience",
            rsa.sign(&with(json!({"aud": "another-api"}))),
        ),
        (
            "expired beyond the leeway",
            rsa.sign(&with(json!({"exp": now - 120}))),
        ),
        ("not yet valid", rsa.sign(&with(json!({"nbf": now + 3600})))),
        ("unknown kid", unpublished.sign(&valid)),
        ("no kid", {
            let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
            header.kid = None;
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem_of(&unpublished)).unwrap();
            jsonwebtoken::encode(&header, &valid, &key).unwrap()
        }),
        (
            "the EC key's kid on an RSA signature",
            rsa.sign_as(Algorithm::RS256, "ec", &valid),
        ),
        (
            "tenant claim missing",
            rsa.sign(&with(json!({"tenant": null}))),
        ),
        (
            "tenant claim not a tenant",
            rsa.sign(&with(json!({"tenant": "_system"}))),
        ),
        ("sub missing", rsa.sign(&with(json!({"sub": null})))),
        ("exp missing", rsa.sign(&with(json!({"exp": null})))),
        ("payload altered after signing", tampered),
        ("not a JWT", "not.a.jwt".to_owned()),
        (
            "sub posing as an API token",
            rsa.sign(&with(json!({"sub": "token:billing"}))),
        ),
        (
            "sub posing as the command line",
            rsa.sign(&with(json!({"sub": "cli:root"}))),
        ),
        (
            "sub of a local user",
            rsa.sign(&with(json!({"sub": "admin"}))),
        ),
        (
            "blank sub",
            rsa.sign(&with(json!({"sub": " \u{a0}\u{2028}"}))),
        ),
        (
            "sub over 255 bytes",
            rsa.sign(&with(json!({"sub": "s".repeat(256)}))),
        ),
        (
            "iss as an array",
            rsa.sign(&with(json!({"iss": [idp::ISSUER]}))),
        ),
        (
            "a claim given twice",
            rsa.sign_raw(
                r#"{"alg":"RS256","kid":"rsa"}"#,
                &valid.to_string().replacen('{', r#"{"tenant":"*","#, 1),
            ),
        ),
        ("a key published for encryption only", {
            provider.publish_jwk(rsa.encryption_jwk("rsa-enc"));
            rsa.sign_as(Algorithm::RS256, "rsa-enc", &valid)
        }),
    ];
    for (what, token) in &cases {
        let response = post_event(
            &app,
            "/events",
            token,
            &json!({"event_type": "forged", "user_identity": "u"}),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{what}: {body}");
    }
    // The reason is the caller's to see.
    let expired = rsa.sign(&with(json!({"exp": now - 120})));
    let answer = post_event(
        &app,
        "/events",
        &expired,
        &json!({"event_type": "x", "user_identity": "u"}),
    )
    .await;
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "the bearer token was refused: the token has expired"
    );
    let forged = app.get("/events?event_type=forged&tenant=*", ADMIN).await;
    assert_ne!(forged.status(), StatusCode::OK, "`*` is not a tenant name");
    for tenant in ["acme", "default"] {
        let found: Value = app
            .get(&format!("/events?event_type=forged&tenant={tenant}"), ADMIN)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(found["events"], json!([]), "{tenant}");
    }
    // Inside the leeway (60 s) an expired token still passes, as clock skew allows.
    let skewed = rsa.sign(&with(json!({"exp": now - 30})));
    let response = post_event(
        &app,
        "/events",
        &skewed,
        &json!({"event_type": "skewed", "user_identity": "u"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

/// The PEM of a generated key's private half, for building a header by hand.
fn pem_of(key: &SigningKey) -> Vec<u8> {
    key.private_pem.clone()
}

async fn a_rotated_key_is_accepted_without_a_restart_and_fetches_are_limited(backend: Backend) {
    let (app, provider) = spawn_with_provider_and(backend, without_failure_limit).await;
    let rotated = SigningKey::generate("rsa-2026-12", Algorithm::RS256);
    let token = rotated.sign(&claims("svc-billing", "acme", "events:write"));
    let body = json!({"event_type": "rotated", "user_identity": "u"});
    assert_eq!(
        post_event(&app, "/events", &token, &body).await.status(),
        StatusCode::UNAUTHORIZED,
        "not published yet"
    );
    provider.publish(&rotated);
    // The set was fetched for the unknown kid a moment ago; the next fetch may come a second
    // after that one.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let response = post_event(&app, "/events", &token, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let event: Value = response.json().await.unwrap();
    assert_eq!(event["recorded_by"], "svc-billing");

    // A flood of unknown kids fetches the set at most once per second.
    let before = provider.fetches();
    let started = Instant::now();
    let stranger = SigningKey::generate("nobody", Algorithm::ES256);
    let flood = stranger.sign(&claims("x", "acme", "events:write"));
    for _ in 0..40 {
        assert_eq!(
            post_event(&app, "/events", &flood, &body).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let fetched = provider.fetches() - before;
    let allowed = started.elapsed().as_secs() as usize + 1;
    assert!(
        fetched <= allowed,
        "{fetched} fetches in {:?}",
        started.elapsed()
    );
}

async fn an_unreachable_provider_is_503_for_jwts_and_passwords_still_work(backend: Backend) {
    let provider = IdentityProvider::start().await;
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    provider.configure(&mut settings);
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    if let Some(jwt) = settings.auth.jwt.as_mut() {
        jwt.jwks_url = Some(format!("http://{address}/jwks.json"));
    }
    let app = spawn_with(db, settings).await;
    let token = provider
        .key("rsa")
        .sign(&claims("dave", "acme", "events:read"));
    // Every try, not just the first: the provider's trouble is not the caller's failure, and
    // does not count towards the address's limit on refused tokens.
    for _ in 0..12 {
        let response = get_with(&app, "/events", &token).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "identity_provider_unavailable");
    }
    assert_eq!(app.get("/events", ADMIN).await.status(), StatusCode::OK);
}

async fn a_key_set_file_is_read_again_for_an_unknown_kid(backend: Backend) {
    let provider = IdentityProvider::start().await;
    let db = TestDb::new(backend).await;
    let jwks_file = db.dir.path().join("jwks.json");
    std::fs::write(&jwks_file, provider.key_set().to_string()).unwrap();
    let mut settings = settings_for(&db);
    provider.configure(&mut settings);
    if let Some(jwt) = settings.auth.jwt.as_mut() {
        jwt.jwks_url = None;
        jwt.jwks_file = Some(jwks_file.clone());
    }
    let app = spawn_with(db, settings).await;
    let token = provider
        .key("ec")
        .sign(&claims("erin", "acme", "events:read"));
    assert_eq!(
        get_with(&app, "/events", &token).await.status(),
        StatusCode::OK
    );

    let rotated = SigningKey::generate("ed-2", Algorithm::EdDSA);
    provider.publish(&rotated);
    std::fs::write(&jwks_file, provider.key_set().to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let token = rotated.sign(&claims("erin", "acme", "events:read"));
    assert_eq!(
        get_with(&app, "/events", &token).await.status(),
        StatusCode::OK
    );
}

async fn a_missing_key_set_file_stops_the_start(backend: Backend) {
    let provider = IdentityProvider::start().await;
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    provider.configure(&mut settings);
    if let Some(jwt) = settings.auth.jwt.as_mut() {
        jwt.jwks_url = None;
        jwt.jwks_file = Some(db.dir.path().join("absent.json"));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let served = tokio::time::timeout(
        Duration::from_secs(30),
        auditor::server::serve_with_listener(settings, listener, shutdown, true),
    )
    .await
    .expect("the start gives up at once");
    let error = served.expect_err("no key set, no start").to_string();
    assert!(error.contains("absent.json"), "{error}");
}

/// Refused bearer tokens from one address are limited (`429` past `auth.max_failures`), but a
/// valid token from that address still gets through: a bearer token cannot be guessed, so its
/// owner is never locked out by someone else's junk.
async fn junk_bearer_tokens_do_not_lock_out_a_valid_one(backend: Backend) {
    let (app, provider) = spawn_with_provider(backend).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let junk = format!("auditor_{i:0>43}");
        statuses.push(get_with(&app, "/events", &junk).await.status().as_u16());
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(&statuses[10..], &[429, 429]);
    let valid = provider
        .key("rsa")
        .sign(&claims("erin", "acme", "events:read"));
    assert_eq!(
        get_with(&app, "/events", &valid).await.status(),
        StatusCode::OK
    );
}

crate::both_backends!(
    junk_bearer_tokens_do_not_lock_out_a_valid_one,
    every_accepted_algorithm_acts_as_its_subject_in_its_tenant,
    forged_expired_and_foreign_tokens_are_refused,
    a_rotated_key_is_accepted_without_a_restart_and_fetches_are_limited,
    an_unreachable_provider_is_503_for_jwts_and_passwords_still_work,
    a_key_set_file_is_read_again_for_an_unknown_kid,
    a_missing_key_set_file_stops_the_start,
);
