//! CloudEvents 1.0 into `POST /events`, sent by the official Python SDK (`cloudevents` 2.x,
//! installed by `scripts/test`) in structured mode, binary mode and as a batch; a redelivered
//! CloudEvent is stored once.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, WRITER, spawn_app};

/// Sends CloudEvents made with the SDK; prints one JSON line per request:
/// `{"status": …, "body": …}`.
const SDK_CLIENT: &str = r#"
import base64, json, sys, urllib.request, urllib.error
from datetime import datetime, timezone
from cloudevents.core.v1.event import CloudEvent
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.formats.json import JSONFormat

base, user, password = sys.argv[1:4]
auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

def send(headers, body):
    request = urllib.request.Request(base + "/events", data=body, method="POST",
                                     headers={**headers, "Authorization": auth})
    try:
        with urllib.request.urlopen(request) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read()
    print(json.dumps({"status": status, "body": json.loads(text)}), flush=True)

def event(id, data=None, **attributes):
    return CloudEvent(attributes={"type": "com.acme.invoice.paid", "source": "/billing",
                                  "id": id, **attributes}, data=data)

paid = event("inv-1", {"amount": 12.50, "account_id": 9007199254740991},
             subject="acct-7", authid="alice@acme.test", action="update", entity="invoice",
             time=datetime(2026, 12, 6, 10, 0, 0, tzinfo=timezone.utc),
             datacontenttype="application/json")
message = to_structured_event(paid)
send(message.headers, message.body)
send(message.headers, message.body)  # redelivered

binary = to_binary_event(event("inv-2", {"amount": 3}, authid="bob", subject="acct-8",
                               datacontenttype="application/json"))
send(binary.headers, binary.body)
send(binary.headers, binary.body)  # redelivered

text = to_binary_event(event("inv-3", b"plain words", datacontenttype="text/plain"))
send(text.headers, text.body)

format = JSONFormat()
batch = [event(f"batch-{i}", {"i": i}, authid="carol") for i in range(3)]
body = b"[" + b",".join(format.write(e) for e in batch) + b"]"
send({"Content-Type": "application/cloudevents-batch+json"}, body)
send({"Content-Type": "application/cloudevents-batch+json"}, body)  # redelivered

unknown = to_structured_event(event("inv-4", {"a": 1}, traceparent="00-abc"))
send(unknown.headers, unknown.body)
"#;

fn run_sdk_client(app: &TestApp) -> Vec<Value> {
    let out = std::process::Command::new("python3")
        .args(["-c", SDK_CLIENT, &app.address, WRITER.0, WRITER.1])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the SDK client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn cloudevents_from_the_sdk_are_recorded_once_in_every_mode(backend: Backend) {
    let app = spawn_app(backend).await;
    let answers = run_sdk_client(&app);
    let statuses: Vec<u64> = answers
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [201, 200, 201, 200, 201, 201, 200, 422],
        "{answers:#?}"
    );

    let paid = &answers[0]["body"];
    assert_eq!(paid["event_type"], "com.acme.invoice.paid");
    assert_eq!(paid["source"], "/billing");
    assert_eq!(paid["idempotency_key"], "ce:8:/billing:inv-1");
    assert_eq!(paid["user_identity"], "alice@acme.test");
    assert_eq!(paid["entity"], "invoice");
    assert_eq!(paid["entity_id"], "acct-7");
    assert_eq!(paid["action"], "update");
    assert_eq!(paid["occurred_at"], "2026-12-06T10:00:00Z");
    assert_eq!(
        paid["event_data"],
        json!({"amount": 12.5, "account_id": 9007199254740991_i64})
    );
    assert_eq!(paid["recorded_by"], WRITER.0);
    assert_eq!(
        answers[1]["body"]["id"], paid["id"],
        "the redelivery is a replay"
    );

    let binary = &answers[2]["body"];
    assert_eq!(binary["user_identity"], "bob");
    assert_eq!(binary["entity_id"], "acct-8");
    assert_eq!(binary["event_data"], json!({"amount": 3}));
    assert_eq!(answers[3]["body"]["id"], binary["id"]);

    let text = &answers[4]["body"];
    assert_eq!(text["user_identity"], "/billing", "no authid: the source");
    // Text, as the structured mode carries it in `data`.
    assert_eq!(text["event_data"], json!({"data": "plain words"}));

    let batch = answers[5]["body"].as_array().unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[2]["event_data"], json!({"i": 2}));
    assert_eq!(answers[6]["body"], answers[5]["body"]);

    let refused = &answers[7]["body"]["error"];
    assert_eq!(refused["field"], "traceparent", "{refused}");

    // Stored once each: 2 + 1 + 3 events, a gapless chain.
    let events = app.all_events().await;
    assert_eq!(events.len(), 6);
    crate::helpers::assert_gapless_chain(&events);
}

/// POSTs `body` to `/events` as the writer with `headers`; the status and the JSON answer.
async fn post(app: &TestApp, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut request = app
        .request(reqwest::Method::POST, "/events", Some(WRITER))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

const STRUCTURED: (&str, &str) = ("Content-Type", "application/cloudevents+json");
const BATCH: (&str, &str) = ("Content-Type", "application/cloudevents-batch+json");

/// Asserts a `422 invalid_field` naming `field`, and returns its message.
fn refused(answer: &(u16, Value), field: &str) -> String {
    let (status, body) = answer;
    assert_eq!(*status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_field", "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

async fn a_context_attribute_that_is_not_a_json_string_is_refused_naming_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let one = r#"{"specversion":"1.0","id":5,"source":"/s","type":"t"}"#;
    let message = refused(&post(&app, &[STRUCTURED], one).await, "id");
    assert!(
        message.contains("`id`") && message.contains("String"),
        "{message}"
    );
    let batch = r#"[{"specversion":"1.0","id":"a","source":"/s","type":"t"},
                    {"specversion":"1.0","id":5,"source":"/s","type":"t"}]"#;
    refused(&post(&app, &[BATCH], batch).await, "[1].id");
    let version = r#"{"specversion":1.0,"id":"a","source":"/s","type":"t"}"#;
    refused(&post(&app, &[STRUCTURED], version).await, "specversion");
    // An extension may be an integer: the type system gives extensions one.
    let extension = r#"{"specversion":"1.0","id":"a","source":"/s","type":"t","entity":7}"#;
    let (status, event) = post(&app, &[STRUCTURED], extension).await;
    assert_eq!(status, 201, "{event}");
    assert_eq!(event["entity"], "7");
    assert_eq!(app.all_events().await.len(), 1);
}

async fn a_binary_mode_header_with_an_invalid_percent_escape_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let headers = |id| {
        [
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("Content-Type", "application/json"),
        ]
    };
    let message = refused(&post(&app, &headers("bad%zz"), "{}").await, "id");
    assert!(
        message.contains("`ce-id`") && message.contains("%zz"),
        "{message}"
    );
    refused(&post(&app, &headers("bad%4"), "{}").await, "id");
    let (status, event) = post(&app, &headers("good%2D1"), "{}").await;
    assert_eq!(status, 201, "{event}");
    assert_eq!(event["idempotency_key"], "ce:2:/s:good-1");
    assert_eq!(app.all_events().await.len(), 1);
}

async fn a_cloudevents_content_type_is_structured_mode_and_refuses_ce_headers(backend: Backend) {
    let app = spawn_app(backend).await;
    let event = r#"{"specversion":"1.0","id":"body","source":"/s","type":"t","data":{"a":1}}"#;
    let binary_headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "header"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    let message = refused(
        &post(&app, &[STRUCTURED, binary_headers[1]], event).await,
        "ce-id",
    );
    assert!(message.contains("structured mode"), "{message}");
    let all = [
        STRUCTURED,
        binary_headers[0],
        binary_headers[1],
        binary_headers[2],
        binary_headers[3],
    ];
    let (status, body) = post(&app, &all, event).await;
    assert_eq!(
        status, 422,
        "the content type decides, not ce-specversion: {body}"
    );
    let batch = format!("[{event}]");
    let (status, body) = post(&app, &[BATCH, binary_headers[0]], &batch).await;
    assert_eq!(status, 422, "{body}");
    assert!(app.all_events().await.is_empty());
    // Without them, the body is the event.
    let (status, body) = post(&app, &[STRUCTURED], event).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["idempotency_key"], "ce:2:/s:body");
}

async fn a_batch_holding_one_id_twice_names_the_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let batch = r#"[{"specversion":"1.0","id":"same","source":"/s","type":"t"},
                    {"specversion":"1.0","id":"same","source":"/s","type":"t"}]"#;
    let message = refused(&post(&app, &[BATCH], batch).await, "[1].id");
    assert!(!message.contains("idempotency_key"), "{message}");
    // The same id from another source is another event.
    let two_sources = r#"[{"specversion":"1.0","id":"same","source":"/s","type":"t"},
                          {"specversion":"1.0","id":"same","source":"/t","type":"t"}]"#;
    let (status, body) = post(&app, &[BATCH], two_sources).await;
    assert_eq!(status, 201, "{body}");
}

async fn data_and_data_base64_together_are_refused_as_mutually_exclusive(backend: Backend) {
    let app = spawn_app(backend).await;
    let event = r#"{"specversion":"1.0","id":"a","source":"/s","type":"t",
                    "data":{"a":1},"data_base64":"AA=="}"#;
    let message = refused(&post(&app, &[STRUCTURED], event).await, "data_base64");
    assert!(message.contains("mutually exclusive"), "{message}");
    assert!(app.all_events().await.is_empty());
}

async fn a_ce_header_on_a_plain_event_is_refused_for_want_of_ce_specversion(backend: Backend) {
    let app = spawn_app(backend).await;
    let event = r#"{"event_type":"t","user_identity":"u"}"#;
    let plain = ("Content-Type", "application/json");
    let message = refused(
        &post(&app, &[plain, ("ce-id", "meant")], event).await,
        "ce-specversion",
    );
    assert!(
        message.contains("`ce-id`") && message.contains("binary mode"),
        "{message}"
    );
    refused(
        &post(&app, &[("ce-subject", "x")], event).await,
        "ce-specversion",
    );
    assert!(app.all_events().await.is_empty());
}

crate::both_backends!(
    cloudevents_from_the_sdk_are_recorded_once_in_every_mode,
    a_context_attribute_that_is_not_a_json_string_is_refused_naming_it,
    a_binary_mode_header_with_an_invalid_percent_escape_is_refused,
    a_cloudevents_content_type_is_structured_mode_and_refuses_ce_headers,
    a_batch_holding_one_id_twice_names_the_id,
    data_and_data_base64_together_are_refused_as_mutually_exclusive,
    a_ce_header_on_a_plain_event_is_refused_for_want_of_ce_specversion,
);
