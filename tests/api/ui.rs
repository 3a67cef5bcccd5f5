//! The web viewer at `/ui`: its sign-in session over plain HTTP (cookie attributes, CSRF,
//! throttling, sign-out, expiry, tenants, headers), and the page itself driven in a headless
//! Chromium through chromedriver: sign in, find and filter events, see one verified in the
//! browser, follow the live tail, and see a tampered event refused; an erased event verified
//! with the record of its erasure, and one blanked in the database without it refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditor::auth::Role;
use auditor::model::TenantScope;
use axum::extract::{Form, Query};
use axum::http::{StatusCode, header};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{
    ADMIN, Backend, READER, TestApp, TestDb, add_test_users, settings_for, spawn_app, spawn_with,
};

both_backends!(
    signing_in_sets_a_strict_http_only_session_cookie,
    a_cookie_write_without_the_csrf_token_is_refused,
    a_sign_in_from_another_site_or_as_a_form_is_refused,
    wrong_passwords_are_refused_and_throttled_as_basic_ones_are,
    signing_out_ends_the_session,
    an_expired_session_is_refused,
    a_session_in_use_outlives_a_short_idle_limit,
    behind_a_proxy_the_public_url_is_the_site,
    a_removed_users_session_ends_at_its_next_request,
    a_changed_password_ends_the_session,
    over_https_the_cookie_is_secure_and_host_prefixed,
    the_cookie_reads_only_the_users_tenants,
    pages_are_served_with_strict_security_headers,
    the_viewer_filters_verifies_and_follows_events_in_a_browser,
    an_erased_event_shows_the_record_of_its_erasure_in_a_browser,
    an_erasure_without_its_record_is_not_verified_in_a_browser,
    people_sign_in_through_the_identity_provider_with_pkce,
);

/// An authorization server for the viewer's sign-in: `/authorize` approves at once and sends
/// the browser back with a code; `/token` exchanges that code for `access_token` only with the
/// verifier of its PKCE challenge, for the redirect URI it was issued to. Counts exchanges.
async fn authorization_server(access_token: String) -> (String, Arc<AtomicUsize>) {
    type Issued = Arc<Mutex<HashMap<String, (String, String)>>>;
    let issued: Issued = Arc::default();
    let exchanges = Arc::new(AtomicUsize::new(0));
    let authorize = {
        let issued = Arc::clone(&issued);
        move |Query(q): Query<HashMap<String, String>>| async move {
            assert_eq!(q["response_type"], "code");
            assert_eq!(q["client_id"], "auditor-ui");
            assert_eq!(q["code_challenge_method"], "S256");
            assert!(q["scope"].split(' ').any(|s| s == "openid"));
            let code = format!("code-{}", issued.lock().unwrap().len());
            issued.lock().unwrap().insert(
                code.clone(),
                (q["code_challenge"].clone(), q["redirect_uri"].clone()),
            );
            let back = format!(
                "{}?code={code}&state={}",
                q["redirect_uri"],
                percent_encoding::utf8_percent_encode(
                    &q["state"],
                    percent_encoding::NON_ALPHANUMERIC
                )
            );
            (StatusCode::SEE_OTHER, [(header::LOCATION, back)])
        }
    };
    let token = {
        let (issued, exchanges) = (Arc::clone(&issued), Arc::clone(&exchanges));
        move |Form(f): Form<HashMap<String, String>>| async move {
            exchanges.fetch_add(1, Ordering::SeqCst);
            let Some((challenge, redirect)) = issued.lock().unwrap().remove(&f["code"]) else {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": "invalid_grant"})),
                );
            };
            use base64::Engine;
            let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
                <sha2::Sha256 as sha2::Digest>::digest(f["code_verifier"].as_bytes()),
            );
            let good = f["grant_type"] == "authorization_code"
                && f["client_id"] == "auditor-ui"
                && f["redirect_uri"] == redirect
                && derived == challenge;
            if !good {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({"error": "invalid_grant"})),
                );
            }
            (
                StatusCode::OK,
                axum::Json(
                    json!({"access_token": access_token, "token_type": "Bearer", "expires_in": 3600}),
                ),
            )
        }
    };
    let app = axum::Router::new()
        .route("/authorize", axum::routing::get(authorize))
        .route("/token", axum::routing::post(token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, exchanges)
}

async fn people_sign_in_through_the_identity_provider_with_pkce(backend: Backend) {
    let idp = crate::idp::IdentityProvider::start().await;
    let token = idp
        .key("ed")
        .sign(&crate::idp::claims("sso-alice", "default", "events:read"));
    let (provider, exchanges) = authorization_server(token).await;
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    idp.configure(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    if let Some(jwt) = settings.auth.jwt.as_mut() {
        jwt.login = Some(auditor::auth::oidc::OidcLogin {
            client_id: "auditor-ui".into(),
            authorization_url: format!("{provider}/authorize"),
            token_url: format!("{provider}/token"),
            redirect_url: format!("{address}/ui/oidc/callback"),
        });
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(auditor::serve_with_listener(
        settings,
        listener,
        shutdown.clone(),
        true,
    ));
    let client = crate::helpers::http_client();
    client_post_event(&client, &address).await;

    // A code with a state this browser did not start is refused before it reaches the provider.
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!(
            "{address}/ui/oidc/callback?code=code-0&state=forged"
        ))
        .header("cookie", "auditor_oidc=real.verifier")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 303);
    assert_eq!(forged.headers()["location"], "/ui/#/sign-in-failed");
    assert!(
        forged
            .headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("auditor_session=")),
        "no session"
    );
    assert_eq!(exchanges.load(Ordering::SeqCst), 0);

    let (_driver, browser) = browser().await;
    browser.goto(&format!("{address}/ui/")).await.unwrap();
    wait_for("the provider's sign-in link", || async {
        browser
            .find(Locator::Id("provider-link"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?
            .then_some(())
    })
    .await;
    click(&browser, "provider-link").await;
    wait_for_rows(&browser, &["1"]).await;
    let user = browser
        .find(Locator::Id("user"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(user, "sso-alice");
    assert_eq!(
        exchanges.load(Ordering::SeqCst),
        1,
        "one code, exchanged once"
    );
    screenshot(&browser, backend, "7-provider-sign-in").await;
    let cookies = browser.get_all_cookies().await.unwrap();
    assert!(
        cookies
            .iter()
            .any(|c| c.name() == "auditor_session" && c.http_only() == Some(true)),
        "{cookies:?}"
    );
    assert!(
        !cookies.iter().any(|c| c.name() == "auditor_oidc"),
        "the flow's cookie is gone"
    );
    // The session holds the provider's grant until its token expires, and no longer.
    let session = cookies
        .iter()
        .find(|c| c.name() == "auditor_session")
        .unwrap()
        .value()
        .to_owned();
    let with_session = |method: Method, path: &str| {
        client
            .request(method, format!("{address}{path}"))
            .header("cookie", format!("auditor_session={session}"))
    };
    assert_eq!(
        with_session(Method::GET, "/events")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let me: Value = with_session(Method::GET, "/ui/session")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["scopes"], json!(["events:read"]));
    let written = with_session(Method::POST, "/events")
        .header("origin", &address)
        .header("x-csrf-token", me["csrf_token"].as_str().unwrap())
        .json(&json!({"event_type": "t", "user_identity": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 403, "the token granted events:read only");
    db.execute(match backend {
        Backend::Sqlite => "UPDATE ui_sessions SET expires_at = 0",
        Backend::Postgres => "UPDATE ui_sessions SET expires_at = now() - interval '1 second'",
    })
    .await
    .unwrap();
    assert_eq!(
        with_session(Method::GET, "/events")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    click(&browser, "sign-out").await;
    wait_for("the sign-in form again", || async {
        browser
            .find(Locator::Id("sign-in-user"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?
            .then_some(())
    })
    .await;
    browser.close().await.unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browsers_checks_agree_with_the_documented_examples() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_driver, client) = browser().await;
    client.goto(&format!("{}/ui/", app.address)).await.unwrap();
    let results = client
        .execute_async(include_str!("ui_verify_examples.js"), vec![])
        .await
        .unwrap();
    assert!(results.get("error").is_none(), "{results}");
    // docs/integrity.md, "Worked example (version 2)": the leaf before and after the erasure.
    let documented_leaf = "6367c087ec17a0146c435ed67daa5cd6f89ddcea4800c057643a1b160507e13b";
    assert_eq!(results["leaf"], documented_leaf);
    assert_eq!(results["erased_leaf"], documented_leaf);
    assert_ne!(results["altered_leaf"], documented_leaf);
    // "HTTP endpoints": the proof of seq 1 in the tree of 7, and its signed checkpoint.
    let documented_root = "094fc27d812cdfc01bb0ba0e707d4e2f120895d6c0194a23e75492fc9fb3f4de";
    assert_eq!(results["root"], documented_root);
    assert_ne!(results["wrong_leaf_root"], documented_root);
    assert_eq!(results["checkpoint"], json!([7, documented_root]));
    // The consistency proof from 2 to 7 holds between the documented roots, not otherwise.
    assert_eq!(results["consistent"], true);
    assert_eq!(results["rewritten"], false);
    assert_eq!(
        results["resized"],
        "the checkpoint's signature does not verify"
    );
    assert_eq!(
        results["other_key"],
        "the checkpoint's signature does not verify"
    );
    // Which erasure records account for an erased event (src/integrity/verify.rs's rules).
    let all = json!([
        "entity_id",
        "event_data",
        "idempotency_key",
        "ip",
        "property",
        "user_identity"
    ]);
    assert_eq!(
        results["record_rules"],
        json!([
            ["event_data"],
            null,
            null,
            null,
            ["user_identity"],
            null,
            all,
            "its payload is missing but was never redacted",
            "it is marked erased but nothing was erased",
        ])
    );
    client.close().await.unwrap();
}

/// A session as the tests hold it: the `Cookie` header to send and the anti-CSRF token.
struct Session {
    cookie: String,
    csrf: String,
    set_cookie: String,
    body: Value,
}

async fn sign_in(app: &TestApp, who: (&str, &str)) -> Session {
    let response = sign_in_raw(app, who).await;
    assert_eq!(response.status(), 201, "sign-in of {}", who.0);
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    Session {
        cookie: set_cookie.split(';').next().unwrap().to_owned(),
        csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        set_cookie,
        body,
    }
}

async fn sign_in_raw(app: &TestApp, (user, password): (&str, &str)) -> reqwest::Response {
    app.request(Method::POST, "/ui/session", None)
        .header("origin", &app.address)
        .json(&json!({"user": user, "password": password}))
        .send()
        .await
        .unwrap()
}

/// The users of the sessions stored, read from the database itself.
async fn session_users(app: &TestApp) -> Vec<String> {
    const SQL: &str = "SELECT user_name FROM ui_sessions ORDER BY user_name";
    match app.db.backend {
        Backend::Sqlite => {
            let conn = app.db.sqlite_connection();
            let mut select = conn.prepare(SQL).unwrap();
            select
                .query_map([], |row| row.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
        Backend::Postgres => app.db.fetch_strings(SQL).await.unwrap(),
    }
}

/// A request carrying the session's cookie and nothing else.
fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    session: &Session,
) -> reqwest::RequestBuilder {
    app.request(method, path, None)
        .header("cookie", &session.cookie)
}

async fn signing_in_sets_a_strict_http_only_session_cookie(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = sign_in(&app, READER).await;
    let attributes: Vec<&str> = session.set_cookie.split("; ").collect();
    assert!(
        attributes[0].starts_with("auditor_session="),
        "{attributes:?}"
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            attributes.contains(&attribute),
            "{attribute} in {attributes:?}"
        );
    }
    assert!(
        !attributes.contains(&"Secure"),
        "plain HTTP: a Secure cookie would never come back"
    );
    assert_eq!(session.body["user"], "reader");
    assert_eq!(session.body["scopes"], json!(["events:read"]));
    assert!(
        session.body["filters"]
            .as_array()
            .unwrap()
            .contains(&json!("event_type"))
    );
    // The secret is stored only as a hash.
    let secret = attributes[0].split_once('=').unwrap().1;
    assert_eq!(session_users(&app).await, ["reader"]);
    assert_ne!(session.csrf, secret);

    app.record(json!({"event_type": "seen", "user_identity": "u"}))
        .await;
    let read = with_cookie(&app, Method::GET, "/events", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let page: Value = read.json().await.unwrap();
    assert_eq!(page["events"][0]["event_type"], "seen");
    let me = with_cookie(&app, Method::GET, "/ui/session", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(me.headers()["cache-control"], "no-store");
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["csrf_token"], session.csrf.as_str());
}

async fn a_cookie_write_without_the_csrf_token_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = sign_in(&app, ADMIN).await;
    let event = json!({"event_type": "forged", "user_identity": "u"});
    for token in [None, Some("0".repeat(64))] {
        let mut request = with_cookie(&app, Method::POST, "/events", &session)
            .header("origin", &app.address)
            .json(&event);
        if let Some(token) = &token {
            request = request.header("x-csrf-token", token);
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 403, "token {token:?}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("X-CSRF-Token")
        );
    }
    let from_elsewhere = with_cookie(&app, Method::POST, "/events", &session)
        .header("origin", "http://evil.example")
        .header("x-csrf-token", &session.csrf)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(
        from_elsewhere.status(),
        403,
        "another site's page, even with the token"
    );
    let cross_site_read = with_cookie(&app, Method::GET, "/events", &session)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site_read.status(), 403);
    let sign_out = with_cookie(&app, Method::DELETE, "/ui/session", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(sign_out.status(), 403, "signing out needs the token too");
    assert!(app.all_events().await.is_empty(), "nothing was recorded");

    let made = with_cookie(&app, Method::POST, "/events", &session)
        .header("origin", &app.address)
        .header("sec-fetch-site", "same-origin")
        .header("x-csrf-token", &session.csrf)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(
        made.status(),
        201,
        "with the token, from the page's own origin"
    );
    let made: Value = made.json().await.unwrap();
    assert_eq!(made["recorded_by"], "admin");

    // A password a browser keeps (HTTP Basic) is sent by it on its own too: from another
    // site's page it changes nothing, though it still reads, and a client that is no browser
    // (no `Sec-Fetch-Site`, no `Origin`) is not affected.
    let basic = |site: Option<&str>| {
        let request = app
            .request(Method::POST, "/events", Some(ADMIN))
            .json(&event);
        match site {
            Some(site) => request.header("sec-fetch-site", site),
            None => request,
        }
    };
    let forged = basic(Some("cross-site")).send().await.unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(basic(None).send().await.unwrap().status(), 201);
    let read = app
        .request(Method::GET, "/events", Some(ADMIN))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
}

async fn a_sign_in_from_another_site_or_as_a_form_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let elsewhere = app
        .request(Method::POST, "/ui/session", None)
        .header("origin", "http://evil.example")
        .json(&json!({"user": READER.0, "password": READER.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 403);
    assert!(elsewhere.headers().get("set-cookie").is_none());
    let form = app
        .request(Method::POST, "/ui/session", None)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("user=reader&password=reader-password-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        form.status(),
        415,
        "a cross-site form can send only form types"
    );
    let none = app
        .request(Method::GET, "/ui/session", None)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert!(
        none.headers().get("www-authenticate").is_none(),
        "no browser password dialog over the page"
    );
}

async fn wrong_passwords_are_refused_and_throttled_as_basic_ones_are(backend: Backend) {
    let db = TestDb::new(backend).await;
    match backend {
        Backend::Sqlite => add_test_users(&db.sqlite().await).await,
        Backend::Postgres => add_test_users(&db.postgres().await).await,
    }
    let mut settings = settings_for(&db);
    settings.auth.max_failures = 3;
    let app = spawn_with(db, settings).await;
    for _ in 0..3 {
        let refused = sign_in_raw(&app, (READER.0, "wrong")).await;
        assert_eq!(refused.status(), 401);
        assert!(refused.headers().get("set-cookie").is_none());
        // No `WWW-Authenticate`: a browser would offer its own password box, and then send
        // that password by itself, also from other sites' pages.
        assert!(
            refused.headers().get("www-authenticate").is_none(),
            "{:?}",
            refused.headers()
        );
        let body: Value = refused.json().await.unwrap();
        assert_eq!(
            body["error"]["message"], "wrong user name or password",
            "{body}"
        );
    }
    let held = sign_in_raw(&app, READER).await;
    assert_eq!(held.status(), 429, "the right password is not even tried");
    assert!(held.headers().contains_key("retry-after"));
    assert_eq!(
        app.get("/events", READER).await.status(),
        429,
        "the same count as HTTP Basic's"
    );
    assert_eq!(sign_in_raw(&app, ADMIN).await.status(), 201, "another name");
}

async fn signing_out_ends_the_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let session = sign_in(&app, READER).await;
    let out = with_cookie(&app, Method::DELETE, "/ui/session", &session)
        .header("origin", &app.address)
        .header("x-csrf-token", &session.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    for path in ["/events", "/ui/session"] {
        let after = with_cookie(&app, Method::GET, path, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(after.status(), 401, "{path}");
    }
    assert!(session_users(&app).await.is_empty());
}

/// Behind a proxy that ends TLS and rewrites `Host`, `public_url` names the site: a browser's
/// `Origin` is compared with it, and the cookie is `Secure` and `__Host-` prefixed.
async fn behind_a_proxy_the_public_url_is_the_site(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.public_url = Some("https://Audit.Example.com/".into());
    let app = spawn_with(db, settings).await;
    let sign_in_from = |origin: &str| {
        app.request(Method::POST, "/ui/session", None)
            .header("origin", origin)
            .json(&json!({"user": ADMIN.0, "password": ADMIN.1}))
            .send()
    };
    let from_the_server_itself = sign_in_from(&app.address).await.unwrap();
    assert_eq!(from_the_server_itself.status(), 403, "not the public site");
    let signed_in = sign_in_from("https://audit.example.com").await.unwrap();
    assert_eq!(signed_in.status(), 201);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("__Host-auditor_session="), "{cookie}");
    assert!(cookie.contains("; Secure"), "{cookie}");
    let read = app
        .request(Method::GET, "/ui/session", None)
        .header("cookie", cookie.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
}

/// The idle limit counts from the session's last use, also when it is shorter than the minute
/// at which uses are otherwise written down.
async fn a_session_in_use_outlives_a_short_idle_limit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.auth.session_idle_secs = 4;
    let app = spawn_with(db, settings).await;
    let session = sign_in(&app, ADMIN).await;
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let read = with_cookie(&app, Method::GET, "/ui/session", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "used every 1.5 s, idle limit 4 s");
    }
}

async fn an_expired_session_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let idle = sign_in(&app, READER).await;
    let old = sign_in(&app, ADMIN).await;
    // As if one were last used 9 hours ago (idle limit 8 h) and the other begun 25 hours ago
    // (lifetime 24 h), though used a moment ago.
    let (idle_sql, old_sql) = match backend {
        Backend::Sqlite => (
            "UPDATE ui_sessions SET last_seen_at = last_seen_at - 32400000000 WHERE user_name = 'reader'",
            "UPDATE ui_sessions SET created_at = created_at - 90000000000 WHERE user_name = 'admin'",
        ),
        Backend::Postgres => (
            "UPDATE ui_sessions SET last_seen_at = last_seen_at - interval '9 hours' WHERE user_name = 'reader'",
            "UPDATE ui_sessions SET created_at = created_at - interval '25 hours' WHERE user_name = 'admin'",
        ),
    };
    app.db.execute(idle_sql).await.unwrap();
    app.db.execute(old_sql).await.unwrap();
    for session in [&idle, &old] {
        let refused = with_cookie(&app, Method::GET, "/events", session)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{}", session.body["user"]);
    }
    let fresh = sign_in(&app, READER).await;
    let read = with_cookie(&app, Method::GET, "/events", &fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
}

async fn a_removed_users_session_ends_at_its_next_request(backend: Backend) {
    let app = spawn_app(backend).await;
    app.add_user("carol", Role::Reader, "carol-password-1")
        .await;
    let session = sign_in(&app, ("carol", "carol-password-1")).await;
    let read = with_cookie(&app, Method::GET, "/events", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    app.remove_user("carol").await;
    wait_until_signed_out(&app, &session).await;
}

/// Polls until the session's reads are refused `401`, as the server learns of a change to its
/// user through its watch of the users table (a notification, or the next poll).
async fn wait_until_signed_out(app: &TestApp, session: &Session) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = with_cookie(app, Method::GET, "/events", session)
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            return;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "the session outlived the change");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_changed_password_ends_the_session(backend: Backend) {
    let app = spawn_app(backend).await;
    app.add_user("carol", Role::Reader, "carol-password-1")
        .await;
    let session = sign_in(&app, ("carol", "carol-password-1")).await;
    let hash = auditor::auth::password::hash("carol-password-2").unwrap();
    app.db
        .execute(&format!(
            "UPDATE users SET password_hash = '{hash}' WHERE name = 'carol'"
        ))
        .await
        .unwrap();
    wait_until_signed_out(&app, &session).await;
    assert_eq!(
        sign_in_raw(&app, ("carol", "carol-password-2"))
            .await
            .status(),
        201
    );
}

async fn over_https_the_cookie_is_secure_and_host_prefixed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut settings = settings_for(&db);
    settings.tls.cert_file = Some(cert);
    settings.tls.key_file = Some(key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("https://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(auditor::serve_with_listener(
        settings,
        listener,
        shutdown.clone(),
        true,
    ));
    // The listener is bound: the request waits in its backlog until the server serves.
    let client = crate::helpers::http_client_from(
        reqwest::Client::builder().danger_accept_invalid_certs(true),
    );
    let signed_in = client
        .post(format!("{address}/ui/session"))
        .header("origin", &address)
        .json(&json!({"user": ADMIN.0, "password": ADMIN.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 201);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    let attributes: Vec<&str> = cookie.split("; ").collect();
    assert!(
        attributes[0].starts_with("__Host-auditor_session="),
        "{cookie}"
    );
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&attribute), "{attribute} in {cookie}");
    }
    assert!(
        !cookie.contains("Domain"),
        "a __Host- cookie names no domain"
    );
    let read = client
        .get(format!("{address}/events"))
        .header("cookie", attributes[0])
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    // Under TLS the session is read from the `__Host-` cookie alone: one set without the
    // prefix (by another host of the domain, or over plain HTTP) cannot plant a session.
    let secret = attributes[0].split_once('=').unwrap().1;
    for planted in [
        format!("auditor_session={secret}"),
        format!("auditor_session=planted; {}", attributes[0]),
    ] {
        let read = client
            .get(format!("{address}/ui/session"))
            .header("cookie", &planted)
            .send()
            .await
            .unwrap();
        let status = read.status();
        let body: Value = read.json().await.unwrap();
        if planted.contains("__Host-") {
            assert_eq!(status, 200, "{planted}: {body}");
            assert_eq!(body["user"], ADMIN.0, "the __Host- cookie counts: {body}");
        } else {
            assert_eq!(status, 401, "{planted}: {body}");
        }
    }

    // A browser speaks HTTP/2 to it (which names the server in its authority, not `Host`),
    // and signs in and reads all the same.
    let (_driver, browser) = browser_with(&["--ignore-certificate-errors"]).await;
    browser.goto(&format!("{address}/ui/")).await.unwrap();
    let protocol = browser
        .execute(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(protocol, "h2");
    client_post_event(&client, &address).await;
    sign_in_with_the_form(&browser).await;
    wait_for_rows(&browser, &["1"]).await;
    browser.close().await.unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

async fn the_cookie_reads_only_the_users_tenants(backend: Backend) {
    let app = spawn_app(backend).await;
    app.add_user_in(
        "acme-reader",
        Role::Reader,
        TenantScope::parse("acme").unwrap(),
        "acme-password-1",
    )
    .await;
    app.post_json(
        "/events?tenant=globex",
        ADMIN,
        &json!({"event_type": "secret", "user_identity": "g"}),
    )
    .await;
    let session = sign_in(&app, ("acme-reader", "acme-password-1")).await;
    assert_eq!(session.body["tenants"], json!(["acme"]));
    let other = with_cookie(&app, Method::GET, "/events?tenant=globex", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    let own = with_cookie(&app, Method::GET, "/events", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    let admin = sign_in(&app, ADMIN).await;
    let tenants = admin.body["tenants"].as_array().unwrap();
    assert_eq!(tenants[0], "default", "{tenants:?}");
    assert!(tenants.contains(&json!("globex")), "{tenants:?}");
}

async fn pages_are_served_with_strict_security_headers(backend: Backend) {
    let app = spawn_app(backend).await;
    for (path, content_type) in [
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/verify.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ] {
        let response = app.request(Method::GET, path, None).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(headers["content-type"], content_type, "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "no-referrer");
    }
    let html = app
        .request(Method::GET, "/ui/", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    let bare = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/ui", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], "/ui/");
    // The session routes carry the same headers.
    let session = sign_in_raw(&app, READER).await;
    assert!(session.headers().contains_key("content-security-policy"));
}

// --- In a browser ------------------------------------------------------------------------

/// A chromedriver of this test's own, ended when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

async fn browser() -> (Driver, Client) {
    browser_with(&[]).await
}

/// A headless Chromium with `extra` arguments.
async fn browser_with(extra: &[&str]) -> (Driver, Client) {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "the viewer's tests need Debian's chromium and chromium-driver (scripts/test installs them)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver {
        child,
        port,
        _profile: profile,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", driver.port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect();
    args.push(format!(
        "--user-data-dir={}",
        driver._profile.path().display()
    ));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"binary": CHROMIUM, "args": args}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromium session");
    (driver, client)
}

/// Where screenshots are kept: `target/ui-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, backend: Backend, name: &str) {
    let png = client.screenshot().await.unwrap();
    let backend = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    std::fs::write(screenshot_dir().join(format!("{backend}-{name}.png")), png).unwrap();
}

const WAIT: Duration = Duration::from_secs(20);

/// Waits until `probe` yields something, polling the page (never a fixed sleep).
async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `data-seq` of the table's rows, top to bottom.
async fn table_seqs(client: &Client) -> Vec<String> {
    let mut seqs = Vec::new();
    if let Ok(rows) = client.find_all(Locator::Css("#events tbody tr")).await {
        for row in rows {
            if let Ok(Some(seq)) = row.attr("data-seq").await {
                seqs.push(seq);
            }
        }
    }
    seqs
}

async fn wait_for_rows(client: &Client, expected: &[&str]) {
    wait_for(&format!("rows {expected:?}"), || async {
        (table_seqs(client).await == expected).then_some(())
    })
    .await;
}

/// The verdict the page shows on event `id` once it has decided: `(state, reason)`.
/// The text of the element `id`, which must be on the page.
async fn text_of(client: &Client, id: &str) -> String {
    client
        .find(Locator::Id(id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn verdict(client: &Client, id: &str) -> (String, String) {
    wait_for(&format!("a verdict on {id}"), || async {
        let status = client.find(Locator::Id("verify-status")).await.ok()?;
        let state = status.attr("data-state").await.ok()??;
        if state == "checking" || status.attr("data-event").await.ok()?? != id {
            return None;
        }
        let reason = client
            .find(Locator::Id("verify-reason"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some((state, reason))
    })
    .await
}

async fn fill(client: &Client, id: &str, text: &str) {
    let input = client.find(Locator::Id(id)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

async fn click(client: &Client, id: &str) {
    click_on(client, Locator::Id(id)).await;
}

async fn click_on(client: &Client, element: Locator<'_>) {
    client.find(element).await.unwrap().click().await.unwrap();
}

/// Waits until the tenant's latest checkpoint covers `size` events.
async fn wait_for_checkpoint(app: &TestApp, size: u64) {
    wait_for(&format!("a checkpoint of {size}"), || async {
        let response = app.get("/checkpoints/latest", ADMIN).await;
        if response.status() != 200 {
            return None;
        }
        let latest: Value = response.json().await.ok()?;
        (latest["tree_size"] == size).then_some(())
    })
    .await;
}

/// Signs in as the admin through the page's form.
async fn sign_in_with_the_form(client: &Client) {
    wait_for("the sign-in form", || async {
        client
            .find(Locator::Id("sign-in-user"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?
            .then_some(())
    })
    .await;
    fill(client, "sign-in-user", ADMIN.0).await;
    fill(client, "sign-in-password", ADMIN.1).await;
    click(client, "sign-in-submit").await;
    wait_for("the event table", || async {
        client
            .find(Locator::Id("list-view"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?
            .then_some(())
    })
    .await;
}

/// Records one event through the API, before the page looks.
async fn client_post_event(client: &reqwest::Client, address: &str) {
    let recorded = client
        .post(format!("{address}/events"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&json!({"event_type": "seen.in.viewer", "user_identity": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(recorded.status(), 201);
}

async fn the_viewer_filters_verifies_and_follows_events_in_a_browser(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    // The background signer signs a tenant's first events at once, then not again for an
    // hour: later events stay uncovered until the test signs them (`POST /checkpoints`).
    settings.integrity.checkpoint_interval_secs = 3600;
    settings.integrity.checkpoint_every_events = 1_000_000;
    let app = spawn_with(db, settings).await;
    let (_driver, client) = browser().await;
    let recorded = app
        .record(json!([
            {"event_type": "invoice.paid", "user_identity": "alice", "event_data": {"account": {"id": 1}, "note": "<img src=x onerror=alert(1)>"}},
            {"event_type": "invoice.paid", "user_identity": "bob", "event_data": {"account": {"id": 2}, "amount": 0.1}},
            {"event_type": "login", "user_identity": "carol", "event_data": {"account": {"id": 3}}},
        ]))
        .await;
    let bob = recorded[1]["id"].as_str().unwrap().to_owned();
    wait_for_checkpoint(&app, 3).await;

    client.goto(&format!("{}/ui/", app.address)).await.unwrap();
    sign_in_with_the_form(&client).await;
    // Newest first.
    wait_for_rows(&client, &["3", "2", "1"]).await;
    let cells = client
        .find(Locator::Css("#events tbody tr[data-seq='1']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(cells.contains("alice"), "{cells}");
    screenshot(&client, backend, "1-events").await;

    // A filter on a field and one on a payload path.
    fill(&client, "filter-event_type", "invoice.paid").await;
    click(&client, "apply").await;
    wait_for_rows(&client, &["2", "1"]).await;
    fill(&client, "data-path-0", "account.id").await;
    fill(&client, "data-value-0", "2").await;
    click(&client, "apply").await;
    wait_for_rows(&client, &["2"]).await;
    screenshot(&client, backend, "2-filtered").await;

    click_row(&client, "2").await;
    let (state, reason) = verdict(&client, &bob).await;
    assert_eq!(state, "verified", "{reason}");
    assert!(
        reason.contains("in the log of 3 events signed by auditor.test/log/default"),
        "{reason}"
    );
    let shown = text_of(&client, "event-json").await;
    assert!(shown.contains(&bob), "{shown}");
    screenshot(&client, backend, "3-verified").await;

    // A key pinned in the browser is the one trusted: another key fails the check even though
    // the server serves its own.
    click_on(&client, Locator::Css("#pinning summary")).await;
    fill(
        &client,
        "pin-key",
        &verifier_key("auditor.test/log/default", [7; 32]),
    )
    .await;
    click(&client, "pin-save").await;
    let (state, reason) = verdict(&client, &bob).await;
    assert_eq!(state, "failed", "{reason}");
    assert!(
        reason.contains("has no signature by auditor.test/log/default"),
        "{reason}"
    );
    click(&client, "pin-forget").await;
    let (state, reason) = verdict(&client, &bob).await;
    assert_eq!(state, "verified", "{reason}");
    click(&client, "pin-server").await;
    let (state, reason) = verdict(&client, &bob).await;
    assert_eq!(state, "verified", "{reason}");
    let details = text_of(&client, "verify-details").await;
    assert!(details.contains("pinned in this browser"), "{details}");

    // The payload that looks like markup is shown as text, and verifies too.
    let first = recorded[0]["id"].as_str().unwrap().to_owned();
    client
        .goto(&format!("{}/ui/#/event/{first}", app.address))
        .await
        .unwrap();
    let (state, reason) = verdict(&client, &first).await;
    assert_eq!(state, "verified", "{reason}");
    let shown = text_of(&client, "event-json").await;
    assert!(shown.contains("<img src=x onerror=alert(1)>"), "{shown}");
    assert!(
        client
            .find_all(Locator::Css("img"))
            .await
            .unwrap()
            .is_empty()
    );

    // Live: a new matching event appears on top; one that does not match does not.
    client
        .goto(&format!("{}/ui/#/", app.address))
        .await
        .unwrap();
    click(&client, "clear").await;
    wait_for_rows(&client, &["3", "2", "1"]).await;
    fill(&client, "data-path-0", "account.id").await;
    fill(&client, "data-value-0", "2").await;
    click(&client, "apply").await;
    wait_for_rows(&client, &["2"]).await;
    click(&client, "live").await;
    wait_for("the live tail to open", || async {
        let text = client
            .find(Locator::Id("live-state"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text == "following").then_some(())
    })
    .await;
    let live = app.record(json!([
        {"event_type": "noise", "user_identity": "dave", "event_data": {"account": {"id": 9}}},
        {"event_type": "invoice.refunded", "user_identity": "bob", "event_data": {"account": {"id": 2}}},
    ]))
    .await;
    wait_for_rows(&client, &["5", "2"]).await;
    let refund = live[1]["id"].as_str().unwrap().to_owned();
    screenshot(&client, backend, "4-live").await;

    // Not yet signed: not claimed as verified, until a checkpoint covers it.
    click_row(&client, "5").await;
    let (state, reason) = verdict(&client, &refund).await;
    assert_eq!(state, "pending", "{reason}");
    assert!(reason.contains("has not been signed since"), "{reason}");
    let status = text_of(&client, "verify-status").await;
    assert!(
        status.contains("Not yet covered by a checkpoint"),
        "{status}"
    );
    screenshot(&client, backend, "5-pending").await;
    app.request(Method::POST, "/checkpoints", Some(ADMIN))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    click(&client, "verify-again").await;
    let (state, reason) = verdict(&client, &refund).await;
    assert_eq!(state, "verified", "{reason}");
    assert!(reason.contains("in the log of 5 events"), "{reason}");
    let details = text_of(&client, "verify-details").await;
    assert!(
        details.contains("consistent with the checkpoint of 3 events this browser verified before"),
        "{details}"
    );

    // Tampered with in the database: the browser says so.
    let drop_triggers: &[&str] = match backend {
        Backend::Sqlite => &["DROP TRIGGER events_are_never_updated"],
        Backend::Postgres => &["DROP TRIGGER events_are_never_changed ON events"],
    };
    for statement in drop_triggers {
        app.db.execute(statement).await.unwrap();
    }
    app.db
        .execute("UPDATE events SET user_identity = 'mallory' WHERE seq = 2")
        .await
        .unwrap();
    client
        .goto(&format!("{}/ui/#/event/{bob}", app.address))
        .await
        .unwrap();
    client.refresh().await.unwrap();
    let (state, reason) = verdict(&client, &bob).await;
    assert_eq!(state, "failed", "{reason}");
    assert!(reason.contains("do not hash to its leaf_hash"), "{reason}");
    screenshot(&client, backend, "6-tampered").await;

    // Signing out in the page ends the session for the API too.
    click(&client, "sign-out").await;
    wait_for("the sign-in form again", || async {
        client
            .find(Locator::Id("sign-in-user"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?
            .then_some(())
    })
    .await;
    assert!(session_users(&app).await.is_empty());
    client.close().await.unwrap();
}

/// A signed-note verifier key named `name` for the Ed25519 public key `public` (docs/integrity.md).
fn verifier_key(name: &str, public: [u8; 32]) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut raw = vec![1u8];
    raw.extend_from_slice(&public);
    let id = sha2::Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(b"\n")
        .chain_update(&raw)
        .finalize();
    format!(
        "{name}+{}+{}",
        hex::encode(&id[..4]),
        base64::engine::general_purpose::STANDARD.encode(&raw)
    )
}

async fn click_row(client: &Client, seq: &str) {
    let row = format!("#events tbody tr[data-seq='{seq}']");
    click_on(client, Locator::Css(&row)).await;
}

/// An app whose checkpoints the test makes (`POST /checkpoints`), with a browser signed in.
async fn erasure_app(backend: Backend) -> (TestApp, Driver, Client) {
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.integrity.checkpoint_interval_secs = 3600;
    settings.integrity.checkpoint_every_events = 1_000_000;
    let app = spawn_with(db, settings).await;
    let (driver, client) = browser().await;
    (app, driver, client)
}

/// Signs the log as it is now (`POST /checkpoints`) and waits for the checkpoint of `size`.
async fn sign_log(app: &TestApp, size: u64) {
    app.request(Method::POST, "/checkpoints", Some(ADMIN))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    wait_for_checkpoint(app, size).await;
}

/// `POST path` with `body` as the admin, which must create the record it answers with.
async fn erase_through_the_api(app: &TestApp, path: &str, body: Value) -> Value {
    let response = app.post_json(path, ADMIN, &body).await;
    assert_eq!(response.status(), 201, "POST {path}");
    response.json().await.unwrap()
}

/// Opens event `id` in the page and waits for its verdict.
async fn open_event(client: &Client, app: &TestApp, id: &str) -> (String, String) {
    client
        .goto(&format!("{}/ui/#/event/{id}", app.address))
        .await
        .unwrap();
    client.refresh().await.unwrap();
    verdict(client, id).await
}

async fn an_erased_event_shows_the_record_of_its_erasure_in_a_browser(backend: Backend) {
    let (app, _driver, client) = erasure_app(backend).await;
    let recorded = app
        .record(json!([
            {"event_type": "customer.updated", "user_identity": "erin@example.com",
             "entity": "customer", "entity_id": "c-1", "ip": "203.0.113.7",
             "event_data": {"email": "erin@example.com"}},
            {"event_type": "invoice.paid", "user_identity": "frank", "event_data": {"card": "4111"}},
            {"event_type": "login", "user_identity": "grace@example.com"},
            {"event_type": "logout", "user_identity": "grace@example.com"},
        ]))
        .await;
    let id = |i: usize| recorded[i]["id"].as_str().unwrap().to_owned();
    // One event's every field, one payload, and a data subject's events (two, one record).
    let erased = erase_through_the_api(
        &app,
        &format!("/events/{}/erase", id(0)),
        json!({"reason": "GDPR art. 17, ticket 42"}),
    )
    .await;
    let redacted = erase_through_the_api(
        &app,
        &format!("/events/{}/redact", id(1)),
        json!({"reason": "card number pasted by mistake"}),
    )
    .await;
    let subject = erase_through_the_api(
        &app,
        "/erasures",
        json!({"user_identity": "grace@example.com", "reason": "erasure request 7"}),
    )
    .await;
    let subject = &subject["record"];
    assert_eq!(subject["event_data"]["erased"], json!([[3, 4]]));
    sign_log(&app, 7).await;

    client.goto(&format!("{}/ui/", app.address)).await.unwrap();
    sign_in_with_the_form(&client).await;
    for (i, record, reason) in [
        (0, &erased, "GDPR art. 17, ticket 42"),
        (1, &redacted, "card number pasted by mistake"),
        (2, subject, "erasure request 7"),
        (3, subject, "erasure request 7"),
    ] {
        let (state, why) = open_event(&client, &app, &id(i)).await;
        assert_eq!(state, "verified", "event {i}: {why}");
        let seq = &record["seq"];
        assert!(why.contains(&format!("is recorded by seq {seq}")), "{why}");
        let shown = text_of(&client, "erasure-record").await;
        let event_type = record["event_type"].as_str().unwrap();
        for expected in [
            &format!("seq {seq}: {event_type}") as &str,
            "(verified)",
            reason,
            &format!("by {}", ADMIN.0),
            record["recorded_at"].as_str().unwrap(),
        ] {
            assert!(shown.contains(expected), "{expected:?} in {shown}");
        }
        let details = text_of(&client, "verify-details").await;
        assert!(details.contains("in the log of 7 events"), "{details}");
        if i == 1 {
            assert!(shown.contains("event_data erased by"), "{shown}");
            screenshot(&client, backend, "8-redacted-with-its-record").await;
        }
        if i == 0 {
            screenshot(&client, backend, "8-erased-with-its-record").await;
        }
    }
    // The link leads to the record, which verifies as any event does.
    click_on(&client, Locator::Css("#erasure-record a")).await;
    let record_id = subject["id"].as_str().unwrap();
    let (state, why) = verdict(&client, record_id).await;
    assert_eq!(state, "verified", "{why}");
    assert!(
        client.find(Locator::Id("erasure-record")).await.is_err(),
        "a record is not erased"
    );
    client.close().await.unwrap();
}

async fn an_erasure_without_its_record_is_not_verified_in_a_browser(backend: Backend) {
    use auditor::model::{Event, Personal};
    let (app, _driver, client) = erasure_app(backend).await;
    let recorded = app
        .record(json!([
            {"event_type": "customer.updated", "user_identity": "erin@example.com",
             "entity_id": "c-1", "ip": "203.0.113.7", "event_data": {"email": "erin@example.com"}},
            {"event_type": "invoice.paid", "user_identity": "frank", "event_data": {"card": "4111"}},
            {"event_type": "login", "user_identity": "grace@example.com"},
        ]))
        .await;
    let id = |i: usize| recorded[i]["id"].as_str().unwrap().to_owned();
    let stored = |id: String| {
        let app = &app;
        async move {
            serde_json::from_value::<Event>(app.get_ok(&format!("/events/{id}")).await).unwrap()
        }
    };
    // An honest redaction of seq 2's payload, recorded by seq 4.
    erase_through_the_api(
        &app,
        &format!("/events/{}/redact", id(1)),
        json!({"reason": "card number pasted by mistake"}),
    )
    .await;
    sign_log(&app, 4).await;
    client.goto(&format!("{}/ui/", app.address)).await.unwrap();
    sign_in_with_the_form(&client).await;
    let (state, why) = open_event(&client, &app, &id(1)).await;
    assert_eq!(state, "verified", "{why}");

    // Someone with database access blanks seq 1 as an erasure would leave it (the commitments
    // kept, so its leaf and proof still verify) and marks it erased, with no record of it. The
    // schema lets an erasure-shaped UPDATE through.
    let now = match backend {
        Backend::Sqlite => {
            (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).to_string()
        }
        Backend::Postgres => "now()".to_owned(),
    };
    let blanked = auditor::integrity::commitment::erase(
        &stored(id(0)).await,
        &Personal::ALL,
        time::OffsetDateTime::now_utc(),
    )
    .unwrap()
    .unwrap();
    let erased = serde_json::to_string(&blanked.erased).unwrap();
    app.db
        .execute(&format!(
            "UPDATE events SET user_identity = NULL, entity_id = NULL, ip = NULL, \
             event_data = NULL, salt_secret = NULL, erased = '{erased}', redacted_at = {now} \
             WHERE tenant = 'default' AND seq = 1"
        ))
        .await
        .unwrap();
    let (state, why) = open_event(&client, &app, &id(0)).await;
    assert_eq!(state, "failed", "{why}");
    assert!(
        why.contains("erased without a record of the erasure"),
        "{why}"
    );
    assert!(why.contains("names seq 1"), "{why}");
    let shown = text_of(&client, "erasure-record").await;
    assert!(shown.contains("No record of this erasure"), "{shown}");
    let details = text_of(&client, "verify-details").await;
    assert!(details.contains("none found"), "{details}");
    screenshot(&client, backend, "9-erased-without-a-record").await;

    // Marked erased at the time of another erasure, whose record does not name it.
    let blanked = auditor::integrity::commitment::erase(
        &stored(id(2)).await,
        &[Personal::UserIdentity],
        time::OffsetDateTime::now_utc(),
    )
    .unwrap()
    .unwrap();
    let erased = serde_json::to_string(&blanked.erased).unwrap();
    app.db
        .execute(&format!(
            "UPDATE events SET user_identity = NULL, salt_secret = NULL, erased = '{erased}', \
             redacted_at = (SELECT redacted_at FROM events WHERE tenant = 'default' AND seq = 2) \
             WHERE tenant = 'default' AND seq = 3"
        ))
        .await
        .unwrap();
    let (state, why) = open_event(&client, &app, &id(2)).await;
    assert_eq!(state, "failed", "{why}");
    assert!(
        why.contains("erased without a record of the erasure"),
        "{why}"
    );

    // The redacted seq 2 made to lose its actor too: its record names the payload alone.
    let more = auditor::integrity::commitment::erase(
        &stored(id(1)).await,
        &[Personal::UserIdentity],
        time::OffsetDateTime::now_utc(),
    )
    .unwrap()
    .unwrap();
    let erased = serde_json::to_string(&more.erased).unwrap();
    app.db
        .execute(&format!(
            "UPDATE events SET user_identity = NULL, erased = '{erased}' \
             WHERE tenant = 'default' AND seq = 2"
        ))
        .await
        .unwrap();
    let (state, why) = open_event(&client, &app, &id(1)).await;
    assert_eq!(state, "failed", "{why}");
    assert!(
        why.contains(
            "it lost user_identity, but the record of its erasure (seq 4) names only event_data"
        ),
        "{why}"
    );
    let shown = text_of(&client, "erasure-record").await;
    assert!(shown.contains("seq 4: audit.redacted"), "{shown}");
    screenshot(&client, backend, "10-erased-beyond-its-record").await;
    client.close().await.unwrap();
}
