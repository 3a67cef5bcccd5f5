//! Seed 2's routes, in seed 2's response format.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, WRITER, spawn_app};

async fn ping_answers_without_credentials(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .request(Method::GET, "/ping", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"], "success");
}

async fn create_log_records_an_event_for_the_customer(backend: Backend) {
    let app = spawn_app(backend).await;
    // Sent the way seed 2's curl would: no Content-Type header of JSON.
    let response = app
        .request(Method::POST, "/create_log/073", Some(WRITER))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"entity":"CustomerData","datetime":"2022-02-02","event_type":"CREATE","property":"name","ip":"125.22.33.22"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"], "success");
    assert_eq!(body["entity"], "CustomerData");
    assert_eq!(body["property"], "name");
    assert_eq!(body["event_type"], "CREATE");
    assert_eq!(body["action"], "create");
    assert_eq!(body["customer"], "073");
    assert_eq!(body["ip"], "125.22.33.22");
    assert_eq!(body["datetime"], "2022-02-02T00:00:00Z");
    let uuid = body["event_uuid"].as_str().unwrap();

    let logs = app.get_ok("/get_log/customer/073").await;
    assert_eq!(logs["result"], "success");
    assert_eq!(logs["customer"], "073");
    assert_eq!(logs["logs"].as_array().unwrap().len(), 1);
    assert_eq!(logs["logs"][0]["event_uuid"], uuid);

    let event = app.get_ok(&format!("/get_log/event/{uuid}")).await;
    assert_eq!(event["result"], "success");
    assert_eq!(event["event_uuid"], uuid);
    assert_eq!(event["amendments"], json!([]));

    let empty = app.get_ok("/get_log/customer/nobody").await;
    assert_eq!(empty["logs"], json!([]));
}

async fn create_log_refuses_bad_bodies_in_seed_format(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        (r#"{"event_type":"CREATE"}"#, 422, Some("entity")),
        (
            r#"{"entity":"E","event_type":"CREATE","datetime":"02/02/2022"}"#,
            422,
            Some("datetime"),
        ),
        (
            r#"{"entity":"E","event_type":"CREATE","extra":1}"#,
            422,
            Some("extra"),
        ),
        ("{oops", 400, None),
    ];
    for (body, status, field) in cases {
        let response = app
            .request(Method::POST, "/create_log/u", Some(WRITER))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["result"], "failed", "{body}");
        assert!(answer["reason"].as_str().is_some_and(|r| !r.is_empty()));
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], field, "{body}");
        }
    }
    let unauthenticated = app
        .request(Method::POST, "/create_log/u", None)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let answer: Value = unauthenticated.json().await.unwrap();
    assert_eq!(answer["result"], "failed");
}

async fn update_log_appends_an_amendment_and_leaves_the_original(backend: Backend) {
    let app = spawn_app(backend).await;
    let original = app
        .post_json("/create_log/073", WRITER, &json!({"entity": "CustomerData", "event_type": "CREATE", "property": "name", "event_data": {"name": "Subin"}}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let uuid = original["event_uuid"].as_str().unwrap();

    let response = app
        .request(Method::PUT, &format!("/update_log/{uuid}"), Some(ADMIN))
        .json(&json!({"event_data": {"name": "Subin Jeong"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let amendment: Value = response.json().await.unwrap();
    assert_eq!(amendment["result"], "success");
    assert_eq!(amendment["amends"], uuid);
    assert_eq!(amendment["action"], "update");
    assert_eq!(
        amendment["entity"], "CustomerData",
        "an admin's amendment inherits"
    );
    assert_eq!(amendment["customer"], "073");
    assert_ne!(amendment["event_uuid"], uuid);

    // A writer cannot read, so its amendment reveals nothing of the original.
    let response = app
        .request(Method::PUT, &format!("/update_log/{uuid}"), Some(WRITER))
        .json(&json!({"property": "email"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let blind: Value = response.json().await.unwrap();
    assert_eq!(blind["amends"], uuid);
    assert_eq!(blind["entity"], Value::Null);
    assert_eq!(blind["event_type"], "audit.amendment");
    assert_eq!(blind["customer"], "writer");

    let shown = app.get_ok(&format!("/get_log/event/{uuid}")).await;
    assert_eq!(
        shown["event_data"],
        json!({"name": "Subin"}),
        "original untouched"
    );
    assert_eq!(shown["hash"], original["hash"]);
    assert_eq!(shown["amendments"].as_array().unwrap().len(), 2);
    assert_eq!(
        shown["amendments"][0]["event_data"],
        json!({"name": "Subin Jeong"})
    );

    let missing = app
        .request(
            Method::PUT,
            "/update_log/01920000-0000-7000-8000-000000000000",
            Some(WRITER),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let answer: Value = missing.json().await.unwrap();
    assert_eq!(answer["result"], "failed");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

async fn delete_log_erases_the_personal_fields_for_admins_only(backend: Backend) {
    let app = spawn_app(backend).await;
    let original = app
        .record(
            json!({"event_type": "a", "user_identity": "u", "entity": "account",
                       "entity_id": "9", "event_data": {"email": "x@example.com"}}),
        )
        .await;
    let id = original["id"].as_str().unwrap();
    let forbidden = app
        .request(Method::DELETE, &format!("/delete_log/{id}"), Some(WRITER))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    let response = app
        .request(Method::DELETE, &format!("/delete_log/{id}"), Some(ADMIN))
        .json(&json!({"reason": "customer asked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let deletion: Value = response.json().await.unwrap();
    assert_eq!(deletion["event_type"], "audit.erased");
    assert_eq!(deletion["action"], "delete");
    assert_eq!(deletion["amends"], id);
    assert_eq!(deletion["amends_hash"], original["hash"]);
    assert_eq!(deletion["event_data"]["reason"], "customer asked");
    assert_eq!(deletion["event_data"]["erased"], json!([[1, 1]]));
    assert_eq!(
        deletion["entity_id"],
        Value::Null,
        "the record repeats no erased value"
    );
    assert_eq!(deletion["customer"], "admin");

    let redacted = app.get_ok(&format!("/events/{id}")).await;
    for field in ["event_data", "user_identity", "entity_id", "salt_secret"] {
        assert_eq!(redacted[field], Value::Null, "{field} is erased");
    }
    assert_eq!(redacted["entity"], "account", "not personal, kept");
    assert!(redacted["redacted_at"].is_string());
    assert!(redacted["erased"]["commitments"]["user_identity"].is_string());
    assert_eq!(
        redacted["leaf_hash"], original["leaf_hash"],
        "the leaf is kept"
    );
    assert_eq!(redacted["hash"], original["hash"]);
    let again = app
        .request(Method::DELETE, &format!("/delete_log/{id}"), Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200, "erased already: the same record again");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["event_uuid"], deletion["event_uuid"]);
    let by_amends = app.get_ok(&format!("/events?amends={id}")).await;
    assert_eq!(by_amends["events"].as_array().unwrap().len(), 1);
}

crate::both_backends!(
    ping_answers_without_credentials,
    create_log_records_an_event_for_the_customer,
    create_log_refuses_bad_bodies_in_seed_format,
    update_log_appends_an_amendment_and_leaves_the_original,
    delete_log_erases_the_personal_fields_for_admins_only,
);
