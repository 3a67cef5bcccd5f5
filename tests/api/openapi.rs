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
        "#/components/schemas/RawEvent"
    );
    assert_eq!(
        record["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Event"
    );
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
