//! What is accepted is kept exactly and stays readable on both backends, or it is refused with
//! 422 naming the field: numbers, U+0000, field sizes in bytes, and the two backends compared.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::helpers::{ADMIN, Backend, TestApp, TestDb, settings_for, spawn_app, spawn_with};
use crate::integrity::{checkpoint, export, verify, verify_export};

/// POSTs a body exactly as written (a `Value` would already have rounded its numbers).
async fn post_text(app: &TestApp, path: &str, body: &str) -> (u16, Value) {
    let response = app
        .request(Method::POST, path, Some(ADMIN))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn with_data(data: &str) -> String {
    format!(r#"{{"event_type":"x","user_identity":"u","event_data":{data}}}"#)
}

/// The payload's commitment in a version 2 leaf, as `docs/integrity.md` defines it, with the
/// canonical form computed by another implementation (`serde_jcs`): SHA-256 of the salt
/// (HMAC-SHA256 of `"event_data"` keyed with the event's `salt_secret`) and `JCS(data)`.
fn jcs_commitment(read: &Value, data: &Value) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let secret = hex::decode(read["salt_secret"].as_str().unwrap()).unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret).unwrap();
    mac.update(b"event_data");
    let salt = mac.finalize().into_bytes();
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(serde_jcs::to_vec(data).unwrap());
    hex::encode(hasher.finalize())
}

/// The payload's commitment as the service computes it for the event's leaf.
fn served_commitment(read: &Value) -> String {
    let event: auditor::model::Event = serde_json::from_value(read.clone()).unwrap();
    let [_, event_data, ..] = auditor::integrity::commitment::commitments(&event).unwrap();
    event_data.unwrap().to_hex()
}

async fn numbers_are_kept_exactly_or_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let accepted = [
        ("0.1", 0.1),
        ("1e23", 1e23),
        ("5e-324", 5e-324),
        ("1.7976931348623157e308", f64::MAX),
        ("1.7976931348623155e308", 1.7976931348623155e308),
        ("-0", 0.0),
        ("9007199254740991", 9_007_199_254_740_991.0),
        ("4.181228217852272e17", 4.181228217852272e17),
        // Seventeen significant digits: the shortest form of their doubles.
        ("0.30000000000000004", 0.30000000000000004),
        ("123456789012345.67", 123456789012345.67),
        ("1.2345678901234567e-100", 1.2345678901234567e-100),
    ];
    let mut ids = Vec::new();
    for (text, double) in accepted {
        let (status, event) =
            post_text(&app, "/events", &with_data(&format!(r#"{{"v":{text}}}"#))).await;
        assert_eq!(status, 201, "{text}: {event}");
        let id = event["id"].as_str().unwrap().to_owned();
        let read = app.get_ok(&format!("/events/{id}")).await;
        assert_eq!(
            read["event_data"]["v"].as_f64(),
            Some(double),
            "{text} read back"
        );
        assert_eq!(
            served_commitment(&read),
            jcs_commitment(&read, &json!({"v": double})),
            "{text} hashed as RFC 8785 says"
        );
        ids.push(id);
    }
    for text in [
        "333333333.33333329",
        "123456789012345678901234567890",
        "12345678901234567.89",
        "12345678901234567890e-5",
        "9007199254740993",
        "1e400",
    ] {
        let (status, error) =
            post_text(&app, "/events", &with_data(&format!(r#"{{"v":{text}}}"#))).await;
        assert_eq!(status, 422, "{text}: {error}");
        assert_eq!(error["error"]["field"], "event_data.v", "{text}");
    }
    // Every read of the largest double works: the list, its proof, its redaction.
    let max = &ids[3];
    let page = app.get_ok("/events?limit=1000").await;
    assert_eq!(page["events"].as_array().unwrap().len(), ids.len());
    app.get_ok(&format!("/events/{max}/proof")).await;
    let (status, _) = post_text(
        &app,
        &format!("/events/{max}/redact"),
        r#"{"reason":"test"}"#,
    )
    .await;
    assert_eq!(status, 201);

    checkpoint(&app).await;
    let report = verify(&app, &[]);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stdout)
    );
    let file = export(&app);
    let lines = std::fs::read_to_string(&file).unwrap();
    let big = lines
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["id"] == ids[7].as_str())
        .expect("the event in the export");
    assert!(
        big["event_data"]["v"].is_f64(),
        "a double is exported as a double, not as integer digits: {}",
        big["event_data"]
    );
    let offline = verify_export(&app, &file).await;
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stdout)
    );
}

async fn u0000_is_refused_everywhere(backend: Backend) {
    let app = spawn_app(backend).await;
    for (body, field) in [
        (with_data(r#"{"k":"v\u0000w"}"#), "event_data.k"),
        (with_data(r#"{"a":{"k\u0000":1}}"#), "event_data.a.k\0"),
        (
            r#"{"event_type":"x","user_identity":"u\u0000"}"#.to_owned(),
            "user_identity",
        ),
    ] {
        let (status, error) = post_text(&app, "/events", &body).await;
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["error"]["field"], field);
    }
    for query in ["user_identity=a%00b", "event_data.k=a%00b"] {
        let response = app.get(&format!("/events?{query}"), ADMIN).await;
        assert_eq!(response.status(), 400, "{query}");
    }
    let (status, error) = post_text(&app, "/events", &with_data(r#"{"a":1,"a":2}"#)).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["field"], "event_data.a");
    // `a\0b:pw` as Basic credentials: wrong credentials, not a database error.
    let response = app
        .request(Method::GET, "/events", None)
        .header("authorization", "Basic YQBiOnB3")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// Every accepted double is found by an `event_data` filter spelling it in shortest form, on
/// both backends (SQLite's own reading of some doubles is one unit off).
async fn every_double_is_found_by_its_own_value(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut runner = TestRunner::deterministic();
    let doubles = prop::collection::vec(
        any::<f64>().prop_filter("finite", |f| f.is_finite() && *f != 0.0),
        60,
    )
    .new_tree(&mut runner)
    .unwrap()
    .current();
    for double in doubles
        .into_iter()
        .chain([-2.3027782228163463e146, 1e300, 5e-324])
    {
        let text = ryu_js::Buffer::new().format_finite(double).to_owned();
        let event_type = format!("d{}", double.to_bits());
        let (status, _) = post_text(
            &app,
            "/events",
            &format!(
                r#"{{"event_type":"{event_type}","user_identity":"u","event_data":{{"v":{text}}}}}"#
            ),
        )
        .await;
        assert_eq!(status, 201);
        let query = format!(
            "/events?event_type={event_type}&event_data.v={}",
            text.replace('+', "%2B")
        );
        let found = app.get_ok(&query).await;
        assert_eq!(found["events"].as_array().unwrap().len(), 1, "{text}");
    }
}

async fn ip_filters_compare_the_canonical_form(backend: Backend) {
    let app = spawn_app(backend).await;
    app.record(json!({"event_type": "x", "user_identity": "u", "ip": "2001:DB8:0:0:0:0:0:1"}))
        .await;
    for spelling in ["2001:db8::1", "2001:DB8::1", "2001:0db8::1"] {
        let page = app.get_ok(&format!("/events?ip={spelling}")).await;
        assert_eq!(page["events"].as_array().unwrap().len(), 1, "{spelling}");
    }
    let response = app.get("/events?ip=garbage", ADMIN).await;
    assert_eq!(response.status(), 400);
}

/// Characters of four UTF-8 bytes, varied so that no database can compress them away.
fn four_byte_text(chars: usize, seed: u32) -> String {
    (0..chars as u32)
        .map(|i| char::from_u32(0x1_0000 + (i * 7919 + seed * 104_729) % 0xF_FFFF).unwrap())
        .collect()
}

async fn text_fields_are_limited_in_bytes_and_storable_up_to_the_limit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut settings = settings_for(&db);
    settings.limits.max_field_len = auditor::model::Limits::MAX_FIELD_LEN;
    let app = spawn_with(db, settings).await;
    let at_limit = |seed| four_byte_text(auditor::model::Limits::MAX_FIELD_LEN / 4, seed);
    let event = json!({
        "event_type": at_limit(1), "user_identity": at_limit(2), "entity": at_limit(3),
        "entity_id": at_limit(4), "property": at_limit(5), "source": at_limit(6),
        "idempotency_key": at_limit(7),
    });
    let recorded = app.record(event.clone()).await;
    let read = app
        .get_ok(&format!("/events/{}", recorded["id"].as_str().unwrap()))
        .await;
    for field in [
        "event_type",
        "user_identity",
        "entity",
        "entity_id",
        "source",
    ] {
        assert_eq!(read[field], event[field], "{field}");
    }
    let over = json!({"event_type": "x", "user_identity": four_byte_text(301, 9)});
    let response = app.post_json("/events", ADMIN, &over).await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["field"], "user_identity");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bytes")
    );
}

async fn a_bulk_line_over_the_byte_limit_is_rejected_and_the_rest_committed(backend: Backend) {
    let app = spawn_app(backend).await;
    // The reproduction: 1024 characters within the character count, 4096 bytes.
    let lines = [
        json!({"event_type": "a", "user_identity": "one"}),
        json!({"event_type": "a", "user_identity": four_byte_text(1024, 1)}),
        json!({"event_type": "a", "user_identity": "three"}),
    ]
    .iter()
    .map(|line| format!("{line}\n"))
    .collect::<String>();
    let response = app
        .request(Method::POST, "/events/bulk", Some(ADMIN))
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 207);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["committed"], 2, "{report}");
    assert_eq!(report["committed_lines"], json!([[1, 1], [3, 3]]));
    assert_eq!(report["rejected"][0]["line"], 2);
}

crate::both_backends!(
    numbers_are_kept_exactly_or_refused,
    u0000_is_refused_everywhere,
    text_fields_are_limited_in_bytes_and_storable_up_to_the_limit,
    a_bulk_line_over_the_byte_limit_is_rejected_and_the_rest_committed,
    deep_nesting_is_refused_and_the_server_survives,
    ip_filters_compare_the_canonical_form,
    every_double_is_found_by_its_own_value,
);

/// Raw JSON text for a payload, drawn from the classes that broke fidelity elsewhere: shortest
/// doubles, long and exponent-heavy decimals, integers around 2^53, U+0000 and control escapes,
/// repeated keys, deep nesting.
fn json_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| ryu_js::Buffer::new().format_finite(f).to_owned()),
        "-?[1-9][0-9]{0,24}(\\.[0-9]{1,24})?([eE][-+]?[0-9]{1,3})?",
        (-(1i64 << 54)..(1i64 << 54)).prop_map(|i| i.to_string()),
        Just("9007199254740993".to_owned()),
        Just("1.7976931348623157e308".to_owned()),
    ];
    let string = prop_oneof![
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(r#""a\u0000b""#.to_owned()),
        Just(r#""\n\t\u001b\u2028""#.to_owned()),
    ];
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        number,
        string,
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec(("[a-zé.\u{1F600}]{0,4}", inner), 0..5).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

fn event_text() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            "\\PC{1,40}",
            Just(four_byte_text(256, 3)),
            Just(four_byte_text(257, 4)),
        ],
        prop::collection::vec(("[a-z]{1,3}", json_text()), 0..6),
    )
        .prop_map(|(user, members)| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).unwrap()))
                .collect();
            format!(
                r#"{{"event_type":"x","user_identity":{},"event_data":{{{}}}}}"#,
                serde_json::to_string(&user).unwrap(),
                members.join(",")
            )
        })
}

/// The same random input, posted to SQLite and to PostgreSQL, gets the same status, the same
/// error field, and reads back as the same value with the same hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_give_the_same_answer_to_the_same_input() {
    let sqlite = spawn_app(Backend::Sqlite).await;
    let postgres = spawn_app(Backend::Postgres).await;
    let cases: u32 = std::env::var("FIDELITY_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let mut runner = TestRunner::deterministic();
    let strategy = event_text();
    let mut accepted = 0;
    for _ in 0..cases {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        let mut answers = Vec::new();
        for app in [&sqlite, &postgres] {
            let (status, answer) = post_text(app, "/events", &body).await;
            assert!(
                status == 201 || status == 422,
                "{status} for {body}: {answer}"
            );
            let read = match answer["id"].as_str() {
                Some(id) => app.get_ok(&format!("/events/{id}")).await,
                None => answer,
            };
            answers.push((status, read));
        }
        let [(status_a, a), (status_b, b)] = <[_; 2]>::try_from(answers).unwrap();
        assert_eq!(status_a, status_b, "status for {body}: {a} / {b}");
        if status_a == 201 {
            accepted += 1;
            assert_eq!(a["event_data"], b["event_data"], "read back for {body}");
            assert_eq!(
                served_commitment(&a),
                jcs_commitment(&a, &a["event_data"]),
                "RFC 8785 commitment for {body}"
            );
            assert_eq!(
                served_commitment(&b),
                jcs_commitment(&b, &a["event_data"]),
                "the same commitment on both backends for {body}"
            );
        } else {
            assert_eq!(a["error"]["field"], b["error"]["field"], "field for {body}");
        }
    }
    // Neither class may starve the comparison.
    assert!(
        (cases / 5..=cases * 4 / 5).contains(&accepted),
        "{accepted} of {cases} accepted"
    );
    for app in [&sqlite, &postgres] {
        let report = verify(app, &[]);
        assert!(
            report.status.success(),
            "{}",
            String::from_utf8_lossy(&report.stdout)
        );
    }
}

/// However deep a writer nests `event_data`, the answer is an error and the server stays up;
/// what is accepted reads back, verifies and exports.
async fn deep_nesting_is_refused_and_the_server_survives(backend: Backend) {
    let app = spawn_app(backend).await;
    let nested = |depth: usize, open: &str, close: &str| {
        format!(
            r#"{{"event_type":"x","user_identity":"u","event_data":{{"k":{}1{}}}}}"#,
            open.repeat(depth),
            close.repeat(depth)
        )
    };
    for body in [
        nested(5000, r#"{"a":"#, "}"),
        nested(5000, "[", "]"),
        nested(200, "[", "]"),
        nested(64, "[", "]"),
    ] {
        let (status, _) = post_text(&app, "/events", &body).await;
        assert!(status == 400 || status == 422, "{status}");
        let response = app
            .request(Method::POST, "/events/bulk", Some(ADMIN))
            .header("content-type", "application/x-ndjson")
            .body(format!("{body}\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 207);
    }
    let (status, event) = post_text(&app, "/events", &nested(63, "[", "]")).await;
    assert_eq!(status, 201, "{event}");
    let id = event["id"].as_str().unwrap();
    assert_eq!(
        app.get_ok(&format!("/events/{id}")).await["event_data"],
        event["event_data"]
    );
    checkpoint(&app).await;
    let report = verify(&app, &[]);
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stdout)
    );
}
