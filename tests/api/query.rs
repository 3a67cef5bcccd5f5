//! Querying: every common field, typed `event_data` paths, time windows, order and pagination.

use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, TestApp, spawn_app};

fn seqs(page: &Value) -> Vec<i64> {
    let events = page.get("events").unwrap_or(page);
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

async fn seed(app: &TestApp) {
    app.record(json!([
        {"event_type": "account.created", "user_identity": "alice", "action": "create",
         "entity": "account", "entity_id": "1", "source": "billing", "ip": "10.0.0.1",
         "outcome": "success", "occurred_at": "2024-01-01T10:00:00Z",
         "event_data": {"account_id": 1346, "plan": {"tier": "gold"}, "trial": true}},
        {"event_type": "customer.billed", "user_identity": "alice", "action": "update",
         "entity": "invoice", "entity_id": "7", "outcome": "failure",
         "occurred_at": "2024-01-01T11:30:00Z",
         "event_data": {"account_id": "1346", "amount": 12.5, "trial": false}},
        {"event_type": "account.deactivated", "user_identity": "bob", "action": "delete",
         "entity": "account", "entity_id": "2", "property": "status",
         "occurred_at": "2024-01-02T09:00:00Z",
         "event_data": {"account_id": 99, "plan": {"tier": "silver"}, "note": null}}
    ]))
    .await;
}

async fn every_common_field_filters_by_equality(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    let cases = [
        ("user_identity=alice", vec![1, 2]),
        ("event_type=customer.billed", vec![2]),
        ("action=delete", vec![3]),
        ("entity=account", vec![1, 3]),
        ("entity_id=7", vec![2]),
        ("property=status", vec![3]),
        ("source=billing", vec![1]),
        ("ip=10.0.0.1", vec![1]),
        ("outcome=failure", vec![2]),
        ("recorded_by=admin", vec![1, 2, 3]),
        ("user_identity=alice&entity=account", vec![1]),
        ("user_identity=nobody", vec![]),
    ];
    // One filter given twice would AND to nothing, or be meant as OR: refused either way.
    let twice = app
        .get(
            "/events?user_identity=alice&user_identity=bob",
            crate::helpers::ADMIN,
        )
        .await;
    assert_eq!(twice.status(), 400);
    for (query, expected) in cases {
        let page = app.get_ok(&format!("/events?{query}")).await;
        assert_eq!(seqs(&page), expected, "{query}");
    }
    let second = app.get_ok("/events?entity_id=7").await;
    let id = second["events"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        seqs(&app.get_ok(&format!("/events?id={id}")).await),
        vec![2]
    );
}

async fn event_data_paths_compare_as_json_values(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    let cases = [
        ("event_data.account_id=1346", vec![1]),
        ("event_data.account_id=%221346%22", vec![2]),
        ("event_data.amount=12.5", vec![2]),
        ("event_data.trial=true", vec![1]),
        ("event_data.trial=false", vec![2]),
        ("event_data.note=null", vec![3]),
        ("event_data.plan.tier=gold", vec![1]),
        ("event_data.plan.tier=platinum", vec![]),
        ("event_data.account_id=99&user_identity=bob", vec![3]),
    ];
    for (query, expected) in cases {
        let page = app.get_ok(&format!("/events?{query}")).await;
        assert_eq!(seqs(&page), expected, "{query}");
    }
}

/// A query string's name or value with every byte but ASCII letters and digits percent-encoded.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Keys in any script are written bare; keys holding a dot, a quote or anything else are
/// written quoted as JSON strings, and a dot inside quotes never means nesting.
async fn event_data_keys_may_be_unicode_or_quoted(backend: Backend) {
    let app = spawn_app(backend).await;
    for data in [
        json!({"имя": "Анна"}),
        json!({"a.b": {"c": 1}}),
        json!({"a": {"b": {"c": 2}}}),
        json!({"we\"ird": {"x": 1}}),
        json!({"a": {"b": {"c": 1}}}),
        json!({"имя": "Анна", "a b": "c\\d"}),
    ] {
        app.record(json!({"event_type": "t", "user_identity": "u", "event_data": data}))
            .await;
    }
    let cases = [
        (vec![("event_data.имя", "Анна")], vec![1, 6]),
        (vec![("event_data.\"имя\"", "Анна")], vec![1, 6]),
        (vec![("event_data.\"a.b\".c", "1")], vec![2]),
        (vec![("event_data.a.b.c", "1")], vec![5]),
        (vec![("event_data.a.b.c", "2")], vec![3]),
        (vec![("event_data.\"a.b\".c", "2")], vec![]),
        (vec![("event_data.\"a\".\"b\".c", "2")], vec![3]),
        (vec![("event_data.a.\"b.c\"", "2")], vec![]),
        (vec![("event_data.\"we\\\"ird\".x", "1")], vec![4]),
        (vec![("event_data.\"we\\u0022ird\".x", "1")], vec![4]),
        (vec![("event_data.\"a b\"", "c\\d")], vec![6]),
        (
            vec![("event_data.\"a b\"", "c\\d"), ("event_data.имя", "Анна")],
            vec![6],
        ),
    ];
    for (pairs, expected) in cases {
        let query: Vec<String> = pairs
            .iter()
            .map(|(name, value)| format!("{}={}", encoded(name), encoded(value)))
            .collect();
        let page = app.get_ok(&format!("/events?{}", query.join("&"))).await;
        assert_eq!(seqs(&page), expected, "{pairs:?}");
    }
}

async fn time_windows_apply_to_occurred_at(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    let cases = [
        ("since=2024-01-01T11:00:00Z", vec![2, 3]),
        ("until=2024-01-01T11:30:00Z", vec![1]),
        (
            "since=2024-01-01T10:00:00Z&until=2024-01-02T00:00:00Z",
            vec![1, 2],
        ),
        ("since=2024-01-01T11:00:00%2B01:00", vec![1, 2, 3]),
    ];
    for (query, expected) in cases {
        let page = app.get_ok(&format!("/events?{query}")).await;
        assert_eq!(seqs(&page), expected, "{query}");
    }
}

async fn order_and_limit_shape_the_page(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app).await;
    assert_eq!(seqs(&app.get_ok("/events?order=desc").await), vec![3, 2, 1]);
    let page = app.get_ok("/events?limit=2").await;
    assert_eq!(seqs(&page), vec![1, 2]);
    assert!(page["next_cursor"].is_string());
    let last = app.get_ok("/events?limit=3").await;
    assert!(
        last["next_cursor"].is_null(),
        "no cursor when nothing remains"
    );
    let bare = app.get_ok("/events/query?order=desc&limit=1").await;
    assert!(bare.is_array());
    assert_eq!(seqs(&bare), vec![3]);
}

async fn pagination_is_stable_while_events_arrive(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..5 {
        app.record(json!({"event_type": "tick", "user_identity": "u", "event_data": {"i": i}}))
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut inserted = 5;
    loop {
        let path = match &cursor {
            Some(c) => format!("/events?event_type=tick&limit=2&cursor={c}"),
            None => "/events?event_type=tick&limit=2".to_owned(),
        };
        let page = app.get_ok(&path).await;
        seen.extend(seqs(&page));
        // New events arrive between page requests, interleaved with events the filter skips.
        if inserted < 9 && page["next_cursor"].is_string() {
            app.record(json!({"event_type": "tick", "user_identity": "u"}))
                .await;
            app.record(json!({"event_type": "other", "user_identity": "u"}))
                .await;
            inserted += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let ticks: Vec<i64> = seqs(&app.get_ok("/events?event_type=tick&limit=1000").await);
    assert_eq!(seen, ticks, "every event exactly once, in order");
    assert!(ticks.len() > 5, "events arrived while paging: {ticks:?}");
    let total = seqs(&app.get_ok("/events?limit=1000").await).len() as i64;

    let mut desc = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/events?order=desc&limit=4&cursor={c}"),
            None => "/events?order=desc&limit=4".to_owned(),
        };
        let page = app.get_ok(&path).await;
        desc.extend(seqs(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(desc, (1..=total).rev().collect::<Vec<i64>>());
}

async fn bad_query_parameters_are_rejected_not_ignored(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        ("user_identiy=alice", "user_identiy"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("order=sideways", "order"),
        ("since=yesterday", "since"),
        ("action=explode", "action"),
        ("outcome=maybe", "outcome"),
        ("id=42", "id"),
        ("event_data.a..b=1", "event_data.a..b"),
        ("event_data.a%27b=1", "event_data.a'b"),
        ("event_data.a%20b=1", "event_data.a b"),
        ("event_data.%22a.b=1", "event_data.\"a.b"),
        ("event_data.%22a%22b=1", "event_data.\"a\"b"),
        ("event_data.%22a%5Cq%22=1", "event_data.\"a\\q\""),
        ("event_data.%22a%5Cu0000b%22=1", "event_data.\"a\\u0000b\""),
        (
            "event_data.a.b.c.d.e.f.g.h.i=1",
            "event_data.a.b.c.d.e.f.g.h.i",
        ),
        ("cursor=forged", "cursor"),
    ];
    for (query, field) in cases {
        let response = app.get(&format!("/events?{query}"), ADMIN).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_query", "{query}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
    let response = app.get("/events/query?user_identiy=alice", ADMIN).await;
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("user_identity") && message.contains("event_data.<path>"),
        "{message}"
    );
}

/// Redacted data must not be discoverable: once a payload is erased, a query on one of its
/// values no longer finds the event, and on SQLite its postings are gone too (see also
/// `store::a_redaction_deletes_the_postings_of_flushed_runs`).
async fn a_redacted_payload_is_no_longer_found_by_its_values(backend: Backend) {
    let app = spawn_app(backend).await;
    let secret = app
        .record(json!({"event_type": "kyc", "user_identity": "alice",
                       "event_data": {"ssn": "123-45-6789", "plan": {"tier": "gold"}, "n": 7,
                                      "a.b": {"c": "x"}, "we\"ird": "y", "имя": "Анна", "": 0}}))
        .await;
    app.record(json!({"event_type": "kyc", "user_identity": "bob",
                      "event_data": {"plan": {"tier": "gold"}, "n": 7.0}}))
        .await;
    assert_eq!(
        seqs(&app.get_ok("/events?event_data.ssn=123-45-6789").await),
        vec![1]
    );
    let id = secret["id"].as_str().unwrap();
    let response = app
        .post_json(
            &format!("/events/{id}/redact"),
            ADMIN,
            &json!({"reason": "erasure request"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    for (query, expected) in [
        ("event_data.ssn=123-45-6789", vec![]),
        ("event_data.plan.tier=gold", vec![2]),
        ("event_data.n=7", vec![2]),
        ("event_data.n=7&order=desc", vec![2]),
        ("event_data.ssn=123-45-6789&user_identity=alice", vec![]),
    ] {
        let page = app.get_ok(&format!("/events?{query}")).await;
        assert_eq!(seqs(&page), expected, "{query}");
    }
    if backend == Backend::Sqlite {
        let conn = app.db.sqlite_connection();
        let left: Vec<(String, i64)> = conn
            .prepare(&format!(
                "{} SELECT field, seq FROM postings \
                 WHERE field LIKE 'event\\_data.%' ESCAPE '\\' \
                 AND (seq = 1 OR value = '123-45-6789')",
                crate::helpers::POSTINGS_CTE
            ))
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, vec![], "no index row of the redacted event is left");
    }
}

crate::both_backends!(
    every_common_field_filters_by_equality,
    event_data_paths_compare_as_json_values,
    event_data_keys_may_be_unicode_or_quoted,
    time_windows_apply_to_occurred_at,
    order_and_limit_shape_the_page,
    pagination_is_stable_while_events_arrive,
    bad_query_parameters_are_rejected_not_ignored,
    a_redacted_payload_is_no_longer_found_by_its_values,
);
