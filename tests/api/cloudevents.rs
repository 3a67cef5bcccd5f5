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

crate::both_backends!(cloudevents_from_the_sdk_are_recorded_once_in_every_mode);
