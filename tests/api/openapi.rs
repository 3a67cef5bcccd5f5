//! The OpenAPI document at `/openapi.json` describes the router as it serves: each documented
//! operation is answered by a route (not the fallback), each method the document leaves out of
//! a path is `405`, and the shared parts (credentials, the error shape, the event filters) are
//! there. The reference page at `/docs` is served from the binary, with no asset from elsewhere.

use auditor::model::Field;
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{ADMIN, Backend, spawn_app};

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// A concrete path for a template: each `{parameter}` by a value of its kind.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "01a207b5-2a8f-72a0-ad9d-f7c7263305a3")
        .replace("{event_uuid}", "01a207b5-2a8f-72a0-ad9d-f7c7263305a3")
        .replace("{tree_size}", "1")
        .replace("{tenant}", "default")
        .replace("{path}", "0/000")
        .replace("{user_id}", "073")
        .replace("{name}", "no-such-token")
}

#[tokio::test]
async fn the_document_describes_the_router_as_it_serves() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "served without credentials");
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 29, "{}", paths.len());

    for (template, item) in paths {
        assert!(
            !template.contains('*'),
            "{template} is not an OpenAPI template"
        );
        let path = concrete(template);
        for method in METHODS {
            let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut request = app.request(http_method, &path, Some(ADMIN));
            if template == "/events/stream" {
                // The stream answers at once with its head; its body never ends.
                request = request.header("Last-Event-ID", "0");
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = if template == "/events/stream" {
                String::new()
            } else {
                response.text().await.unwrap()
            };
            let documented = item.get(method).is_some();
            let fallback = status == 405 || (status == 404 && text.contains("no such route"));
            assert_eq!(
                !fallback, documented,
                "{method} {template}: answered {status} {text}, documented: {documented}"
            );
        }
    }

    // Credentials: every operation but the health checks names both schemes.
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["basic"]["scheme"], "basic");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    for (template, item) in paths {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let security = operation["security"].as_array().unwrap();
            if ["/ping", "/healthz", "/readyz"].contains(&template.as_str()) {
                assert_eq!(security, &[serde_json::json!({})], "{template}");
                continue;
            }
            assert_eq!(security.len(), 2, "{method} {template}");
            let unauthorized = &operation["responses"]["401"]["content"]["application/json"];
            assert_eq!(
                unauthorized["schema"]["$ref"], "#/components/schemas/ErrorBody",
                "{method} {template}"
            );
        }
    }
    // What a success answers with, and what `POST /events` takes.
    for (template, item) in paths {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|status| status.starts_with('2')),
                "{method} {template} documents no success"
            );
        }
    }
    let record = &paths["/events"]["post"];
    assert_eq!(
        record["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EventsToRecord"
    );
    let one_or_many = &document["components"]["schemas"]["EventsToRecord"]["oneOf"];
    assert_eq!(one_or_many[0]["$ref"], "#/components/schemas/RawEvent");
    assert_eq!(
        one_or_many[1]["items"]["$ref"],
        "#/components/schemas/RawEvent"
    );
    assert_eq!(
        record["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/RecordedEvents"
    );
    let recorded_events = &document["components"]["schemas"]["RecordedEvents"]["oneOf"];
    assert_eq!(recorded_events[0]["$ref"], "#/components/schemas/Event");
    let event = document["components"]["schemas"]["Event"]["properties"]
        .as_object()
        .unwrap();
    let recorded = app
        .record(serde_json::json!({"event_type": "t", "user_identity": "u"}))
        .await;
    for key in recorded.as_object().unwrap().keys() {
        assert!(event.contains_key(key), "Event lacks `{key}`");
    }

    let ids: Vec<&str> = paths
        .values()
        .flat_map(|item| METHODS.iter().filter_map(|m| item.get(*m)))
        .map(|operation| operation["operationId"].as_str().unwrap())
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "operation ids repeat: {ids:?}");

    // The error shape is the one the API answers with.
    let error = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    let refused = app
        .request(Method::GET, "/events?limit=0", Some(ADMIN))
        .send()
        .await
        .unwrap();
    let body: Value = refused.json().await.unwrap();
    let object = body["error"].as_object().unwrap();
    let described = document["components"]["schemas"]["ErrorObject"]["properties"]
        .as_object()
        .unwrap();
    for key in object.keys() {
        assert!(described.contains_key(key), "`{key}` is not described");
    }

    // Every query parameter of a query of the log.
    let parameters: Vec<&str> = paths["/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let expected = Field::ALL
        .iter()
        .map(|field| field.name())
        .chain(["since", "until", "limit", "order", "cursor", "tenant"]);
    for name in expected {
        assert!(parameters.contains(&name), "GET /events lacks `{name}`");
    }
    let description = paths["/events"]["get"]["description"].as_str().unwrap();
    assert!(description.contains("event_data.<path>"), "{description}");
}

#[tokio::test]
async fn the_reference_page_is_served_from_the_binary() {
    let app = spawn_app(Backend::Sqlite).await;
    let page = app
        .request(Method::GET, "/docs/", None)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
        "swagger-ui.css",
    ] {
        let response = app
            .request(Method::GET, &format!("/docs/{asset}"), None)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let text = response.text().await.unwrap();
        if asset == "swagger-initializer.js" {
            assert!(text.contains("/openapi.json"), "{text}");
            // Nothing is sent to swagger.io's online validator.
            assert!(text.contains(r#""validatorUrl": "none""#), "{text}");
        }
    }
}

/// A route that reads no query of the log refuses a parameter it does not take, as the query
/// routes do: a misspelt `tenant` must not record into the caller's own tenant unnoticed.
#[tokio::test]
async fn a_parameter_a_route_does_not_take_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = serde_json::json!({"event_type": "t", "user_identity": "u"});
    let misspelt = app
        .request(Method::POST, "/events?tenat=acme", Some(ADMIN))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(misspelt.status(), 400);
    let error: Value = misspelt.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_query");
    assert_eq!(error["error"]["field"], "tenat");
    assert_eq!(app.db.count_events("default").await, 0, "nothing recorded");
    let listed = app
        .request(Method::GET, "/admin/tokens?tenat=acme", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 400);
    // What a route does take still passes.
    let named = app
        .request(Method::POST, "/events?tenant=default", Some(ADMIN))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(named.status(), 201);
    let id = named.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let proof = app
        .request(
            Method::GET,
            &format!("/events/{id}/proof?tree_size=1"),
            Some(ADMIN),
        )
        .send()
        .await
        .unwrap();
    assert_ne!(proof.status(), 400, "tree_size is a parameter of the proof");
}

/// A numeric parameter refused for its value names itself and what it takes, in the error shape
/// of the API, never serde's text; a tree size beyond any JSON-exact number (2^53) or beyond the
/// tree is a `400` as well.
async fn numeric_parameters_are_refused_by_name(backend: Backend) {
    let app = spawn_app(backend).await;
    let recorded = app
        .record(serde_json::json!({"event_type": "t", "user_identity": "u"}))
        .await;
    let id = recorded["id"].as_str().unwrap();
    let cases = [
        (format!("/events/{id}/proof?tree_size=abc"), "tree_size"),
        (
            format!("/events/{id}/proof?tree_size=9007199254740992"),
            "tree_size",
        ),
        (format!("/events/{id}/proof?tree_size=0"), "tree_size"),
        (format!("/events/{id}/proof?tree_size=5"), "tree_size"),
        (
            format!("/events/{id}/proof?tree_size=1&tree_size=1"),
            "tree_size",
        ),
        ("/checkpoints/consistency?from=abc".to_owned(), "from"),
        ("/checkpoints/consistency?from=1&to=abc".to_owned(), "to"),
        (
            "/checkpoints/consistency?from=1&to=18446744073709551616".to_owned(),
            "to",
        ),
        ("/checkpoints/consistency?from=1&to=9".to_owned(), "to"),
        ("/checkpoints/consistency?from=0".to_owned(), "from"),
        ("/checkpoints/consistency".to_owned(), "from"),
        ("/checkpoints/abc".to_owned(), "tree_size"),
        ("/checkpoints/9007199254740993".to_owned(), "tree_size"),
        ("/checkpoints/0".to_owned(), "tree_size"),
        ("/logs/default/tile/0/x".to_owned(), "path"),
        ("/events?limit=abc".to_owned(), "limit"),
        ("/events?limit=18446744073709551616".to_owned(), "limit"),
    ];
    for (path, param) in cases {
        let response = app
            .request(Method::GET, &path, Some(ADMIN))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_query", "{path}: {body}");
        assert_eq!(body["error"]["field"], param, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{param}`")), "{path}: {message}");
        assert!(!message.contains("deserialize"), "{path}: {message}");
    }
    // Within range, the same parameters are taken.
    for path in [
        format!("/events/{id}/proof?tree_size=1"),
        "/checkpoints/consistency?from=1&to=1".to_owned(),
    ] {
        let response = app
            .request(Method::GET, &path, Some(ADMIN))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

/// `POST /events/bulk` reads NDJSON (or JSON, or a body without a type), and refuses other
/// types as `POST /events` does: a form or `text/plain` is a `415`, and nothing is recorded.
async fn bulk_refuses_what_is_not_ndjson(backend: Backend) {
    let app = spawn_app(backend).await;
    let line = "{\"event_type\": \"t\", \"user_identity\": \"u\"}\n";
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = app
            .request(Method::POST, "/events/bulk", Some(ADMIN))
            .header("content-type", content_type)
            .body(line)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{content_type}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unsupported_media_type");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("NDJSON"),
            "{body}"
        );
    }
    assert_eq!(app.db.count_events("default").await, 0);
    for content_type in [
        Some("application/x-ndjson"),
        Some("application/json; charset=utf-8"),
        None,
    ] {
        let mut request = app.request(Method::POST, "/events/bulk", Some(ADMIN));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.body(line).send().await.unwrap();
        assert_eq!(response.status(), 200, "{content_type:?}");
    }
    assert_eq!(app.db.count_events("default").await, 3);
}

/// Each documented body, parameter and status is the one the route has: the token routes,
/// checkpoint creation, the erasures and the seed routes describe their bodies; the tenant and
/// the tree sizes their rules; the statuses the handlers answer with are all listed.
#[tokio::test]
async fn the_document_describes_bodies_parameters_and_statuses() {
    let app = spawn_app(Backend::Sqlite).await;
    let document: Value = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = &document["paths"];
    for (path, method) in [
        ("/admin/tokens", "post"),
        ("/erasures", "post"),
        ("/events/{id}/erase", "post"),
        ("/events/{id}/redact", "post"),
        ("/create_log/{user_id}", "post"),
        ("/update_log/{event_uuid}", "put"),
        ("/delete_log/{event_uuid}", "delete"),
        ("/events", "post"),
        ("/events/bulk", "post"),
    ] {
        let body = &paths[path][method]["requestBody"]["content"];
        assert!(
            body.as_object().is_some_and(|content| !content.is_empty()),
            "{method} {path} has no body described"
        );
    }
    let schemas = &document["components"]["schemas"];
    let token = &schemas["NewToken"];
    assert_eq!(token["required"], serde_json::json!(["name", "scopes"]));
    assert!(paths["/checkpoints"]["post"].get("requestBody").is_none());

    let tenant_pattern =
        "^([a-z0-9_-][a-z0-9._-]{0,63}|\\.[a-z0-9_-][a-z0-9._-]{0,62}|\\.\\.[a-z0-9._-]{1,62})$";
    let parameter = |path: &str, method: &str, name: &str| -> Value {
        paths[path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} lacks {name}"))
            .clone()
    };
    assert_eq!(
        parameter("/events", "get", "tenant")["schema"]["pattern"],
        tenant_pattern
    );
    assert_eq!(
        parameter("/logs/{tenant}/checkpoint", "get", "tenant")["schema"]["pattern"],
        tenant_pattern
    );
    let from = parameter("/checkpoints/consistency", "get", "from");
    assert_eq!(from["required"], true);
    assert_eq!(from["schema"]["minimum"], 1);
    assert_eq!(from["schema"]["maximum"], 9_007_199_254_740_991_u64);
    let size = parameter("/checkpoints/{tree_size}", "get", "tree_size");
    assert_eq!(size["schema"]["minimum"], 1);

    let statuses = |path: &str, method: &str| -> Vec<String> {
        paths[path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for (path, method, status) in [
        ("/checkpoint", "get", "404"),
        ("/checkpoints/latest", "get", "404"),
        ("/checkpoints", "post", "200"),
        ("/checkpoints", "post", "201"),
        ("/checkpoints", "post", "409"),
        ("/events/bulk", "post", "408"),
        ("/events/bulk", "post", "415"),
        ("/events/bulk", "post", "207"),
        ("/create_log/{user_id}", "post", "409"),
        ("/erasures", "post", "422"),
        ("/admin/tokens", "post", "409"),
    ] {
        assert!(
            statuses(path, method).contains(&status.to_owned()),
            "{method} {path} does not document {status}"
        );
    }
}

/// Schemathesis, a property-based tester, runs the API from its own document: generated
/// requests, valid and invalid, to every operation, with every check it has. No answer may be a
/// 5xx, and every answer must be one the document describes (status, content type, schema),
/// valid data must be taken and invalid data refused.
async fn the_api_keeps_to_its_document(backend: Backend) {
    let db = crate::helpers::TestDb::new(backend).await;
    let mut settings = crate::helpers::settings_for(&db);
    // The run sends thousands of requests with one credential: a rate limit would answer most
    // of them 429 and test nothing.
    settings.limits.requests_per_sec = 0;
    // The run also sends wrong credentials on purpose (`ignored_auth`), and expects each refused
    // 401; the lockout after repeated failures (tested in `auth`) would answer them 429.
    settings.auth.max_failures = 0;
    let app = crate::helpers::spawn_with(db, settings).await;
    // Something to read, prove and tile.
    for i in 0..3 {
        app.record(serde_json::json!({
            "event_type": "account.created",
            "user_identity": format!("user-{i}"),
            "event_data": {"n": i},
        }))
        .await;
    }
    let issued = app
        .request(Method::POST, "/checkpoints", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), 201);
    // The run signs in as the admin, with a password: it creates and revokes API tokens
    // itself, and finds their names in `GET /admin/tokens`, so a token of its own would be
    // revoked halfway through, and every answer after it a 401.
    let dir = tempfile::tempdir().unwrap();
    let here = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api");
    let mut run = tokio::process::Command::new("python3");
    run.current_dir(dir.path())
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env("PYTHONPATH", here)
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(format!("{here}/schemathesis.toml"))
        .arg("run")
        .arg(format!("{}/openapi.json", app.address))
        .args(["--auth", &format!("{}:{}", ADMIN.0, ADMIN.1)])
        .args(["--checks", "all"])
        // The live tail answers at once but never ends its body: a request to it would only
        // time out. Its head and parameters are tested in `stream`.
        .args(["--exclude-path", "/events/stream"])
        .args(["--max-examples", "60"])
        // The same cases every run, so that a failure is the service's, not the draw's.
        .arg("--generation-deterministic")
        // One worker: CPython 3.11's `ast` is not thread-safe, and hypothesis parses lambdas'
        // sources with it while it builds strategies, which in threads now and then fails with
        // "AST constructor recursion depth mismatch" (a runtime error of the tool, not the API).
        .args(["--workers", "1"])
        .args(["--no-color", "--warnings", "off"])
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let output = run
        .output()
        .await
        .expect("python3 -m schemathesis.cli (scripts/test installs schemathesis)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "schemathesis on {backend:?}, {:.0} s:\n{report}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}"
    );
}

crate::both_backends!(
    numeric_parameters_are_refused_by_name,
    bulk_refuses_what_is_not_ndjson,
    the_api_keeps_to_its_document,
);
