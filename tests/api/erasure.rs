//! Erasure: one event's personal fields, or a data subject's across the tenant, deleted while
//! the log still verifies (online, and offline from an export), with the erasure recorded, the
//! values no longer found by any filter nor present in the database files.

use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::helpers::{ADMIN, Backend, TestApp, WRITER, spawn_app};
use crate::integrity::{checkpoint, export, run_documented_checker, verify, verify_export};

/// Every personal field, with values no other event has.
fn personal(marker: &str) -> Value {
    json!({
        "event_type": "customer.updated", "user_identity": format!("{marker}@example.com"),
        "action": "update", "entity": "customer", "entity_id": format!("{marker}-id"),
        "property": format!("{marker}-property"), "ip": "203.0.113.77", "source": "crm",
        "outcome": "success", "idempotency_key": format!("{marker}-key"),
        "event_data": {"email": format!("{marker}@example.com"), "plan": "gold"}
    })
}

/// A personal field's commitment in a version 2 leaf, as `docs/integrity.md` defines it:
/// SHA-256 of the salt (HMAC-SHA256 of the field's name keyed with the event's secret) and the
/// value's canonical JSON (here a string).
fn commitment(secret_hex: &str, field: &str, value: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let secret = hex::decode(secret_hex).unwrap();
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&secret).unwrap();
    mac.update(field.as_bytes());
    let salt = mac.finalize().into_bytes();
    let mut hasher = sha2::Sha256::new();
    hasher.update(salt);
    hasher.update(serde_json::to_vec(value).unwrap());
    hex::encode(hasher.finalize())
}

async fn post(app: &TestApp, path: &str, who: (&str, &str), body: Value) -> (u16, Value) {
    let response = app.post_json(path, who, &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn found(app: &TestApp, query: &str) -> usize {
    app.get_ok(&format!("/events?{query}")).await["events"]
        .as_array()
        .unwrap()
        .len()
}

fn assert_verifies(app: &TestApp) {
    let report = verify(app, &[]);
    let out = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{out}");
}

/// The app's verifier key for the default tenant, as `GET /keys` publishes it.
async fn published_key(app: &TestApp) -> String {
    app.get_ok("/keys").await["keys"][0]["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Runs the documented checker expecting it to fail; returns what it printed on stderr.
async fn checker_failure(app: &TestApp, export: Option<&std::path::Path>, missed: &str) -> String {
    let key = published_key(app).await;
    let checked = run_documented_checker(app, &key, export).await;
    assert!(!checked.status.success(), "the checker missed {missed}");
    String::from_utf8_lossy(&checked.stderr).into_owned()
}

/// The checker in `docs/integrity.md` accepts the log through the API and from an export.
async fn assert_documented_checker_agrees(app: &TestApp) {
    let key = published_key(app).await;
    let exported = export(app);
    for export in [None, Some(exported.as_path())] {
        let checked = run_documented_checker(app, &key, export).await;
        assert!(
            checked.status.success(),
            "the checker in the docs ({export:?}): {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
}

async fn one_event_is_erased_and_the_log_still_verifies(backend: Backend) {
    let app = spawn_app(backend).await;
    app.record(json!({"event_type": "before", "user_identity": "someone"}))
        .await;
    let original = app.record(personal("zq7xw")).await;
    app.record(json!({"event_type": "after", "user_identity": "someone"}))
        .await;
    let id = original["id"].as_str().unwrap();
    let path = format!("/events/{id}/erase");

    let (status, _) = post(&app, &path, WRITER, json!({"reason": "GDPR art. 17"})).await;
    assert_eq!(status, 403, "admins only");
    let (status, body) = post(&app, &path, ADMIN, json!({"reason": " "})).await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (422, json!("reason"))
    );

    let (status, record) = post(&app, &path, ADMIN, json!({"reason": "GDPR art. 17"})).await;
    assert_eq!(status, 201, "{record}");
    assert_eq!(record["event_type"], "audit.erased");
    assert_eq!(record["amends"], id);
    assert_eq!(record["event_data"]["erased"], json!([[2, 2]]));
    assert_eq!(record["event_data"]["reason"], "GDPR art. 17");
    assert_eq!(
        record["event_data"]["fields"],
        json!([
            "entity_id",
            "event_data",
            "idempotency_key",
            "ip",
            "property",
            "user_identity"
        ])
    );
    assert!(
        !record.to_string().contains("zq7xw"),
        "the record repeats no erased value: {record}"
    );

    let erased = app.get_ok(&format!("/events/{id}")).await;
    for field in [
        "user_identity",
        "entity_id",
        "property",
        "ip",
        "idempotency_key",
        "event_data",
        "salt_secret",
    ] {
        assert_eq!(erased[field], Value::Null, "{field}");
    }
    for kept in [
        "event_type",
        "action",
        "entity",
        "source",
        "outcome",
        "leaf_hash",
        "hash",
    ] {
        assert_eq!(erased[kept], original[kept], "{kept} is kept");
    }
    assert_eq!(erased["redacted_at"], record["recorded_at"]);
    assert_eq!(
        erased["erased"]["commitments"].as_object().unwrap().len(),
        6
    );
    assert!(!erased.to_string().contains("zq7xw"));

    // The kept commitment confirms the true value only with the secret, which the erasure
    // deleted (the test kept it from before); what is still served gives no salt for it, and
    // the value's plain hash is not the commitment.
    let value = "zq7xw@example.com";
    let kept = erased["erased"]["commitments"]["user_identity"].clone();
    let secret = original["salt_secret"].as_str().unwrap();
    assert_eq!(kept, json!(commitment(secret, "user_identity", value)));
    assert!(erased["erased"]["salts"].get("user_identity").is_none());
    assert_ne!(
        kept,
        json!(hex::encode(sha2::Sha256::digest(format!("\"{value}\""))))
    );

    // No filter finds it by what it no longer holds.
    for query in [
        "user_identity=zq7xw@example.com",
        "entity_id=zq7xw-id",
        "property=zq7xw-property",
        "ip=203.0.113.77",
        "idempotency_key=zq7xw-key",
        "event_data.email=zq7xw@example.com",
        "event_data.plan=gold",
    ] {
        assert_eq!(found(&app, query).await, 0, "{query}");
    }
    assert_eq!(
        found(&app, "entity=customer").await,
        2,
        "entity is not personal: the event and its record, which names the entity"
    );

    // Again: the same record, not an error.
    let (status, again) = post(&app, &path, ADMIN, json!({"reason": "again"})).await;
    assert_eq!((status, again["id"].clone()), (200, record["id"].clone()));
    // Seed 2's DELETE answers the same way for an erased event.
    let deleted = app
        .request(Method::DELETE, &format!("/delete_log/{id}"), Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    // The record itself is kept whole.
    let record_id = record["id"].as_str().unwrap();
    let (status, _) = post(
        &app,
        &format!("/events/{record_id}/erase"),
        ADMIN,
        json!({"reason": "x"}),
    )
    .await;
    assert_eq!(status, 409);
    // The key is free again: the same body under it is a new event.
    let replay = app.post_json("/events", ADMIN, &personal("zq7xw")).await;
    assert_eq!(replay.status(), 201);

    checkpoint(&app).await;
    assert_verifies(&app);
    let exported = export(&app);
    let text = std::fs::read_to_string(&exported).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().filter(|l| l.contains("zq7xw")).count() == 1,
        "only the event recorded after the erasure holds the values"
    );
    let report = verify_export(&app, &exported).await;
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stdout)
    );
    let key = published_key(&app).await;
    for export in [None, Some(exported.as_path())] {
        let checked = run_documented_checker(&app, &key, export).await;
        assert!(
            checked.status.success(),
            "the checker in the docs ({export:?}): {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    // ...and fails an export in which one recorded field was changed.
    let tampered = exported.with_file_name("tampered.ndjson");
    std::fs::write(&tampered, text.replacen("\"before\"", "\"after\"", 1)).unwrap();
    let err = checker_failure(&app, Some(&tampered), "a changed field").await;
    assert!(err.contains("seq 1: a recorded field was changed"), "{err}");
}

/// Every event of one user across the tenant, in one transaction with its record; the others
/// keep theirs, and the log verifies.
async fn a_data_subject_is_erased_across_the_tenant(backend: Backend) {
    let app = spawn_app(backend).await;
    let total = 10_000;
    for chunk in 0..total / 1000 {
        let batch: Vec<Value> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| {
                let user = if i % 10 == 3 {
                    "subject@example.com"
                } else {
                    "other"
                };
                json!({"event_type": "billed", "user_identity": user,
                       "entity_id": format!("invoice-{i}"), "event_data": {"n": i}})
            })
            .collect();
        app.record(Value::from(batch)).await;
    }
    let (status, answer) = post(
        &app,
        "/erasures",
        ADMIN,
        json!({"user_identity": "subject@example.com", "reason": "erasure request 7"}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["erased"], total / 10);
    let record = &answer["record"];
    assert_eq!(record["event_type"], "audit.erased");
    assert_eq!(record["amends"], Value::Null);
    let ranges = record["event_data"]["erased"].as_array().unwrap();
    assert_eq!(ranges.len(), total as usize / 10, "every tenth event");
    assert_eq!(ranges[0], json!([4, 4]));
    assert!(!record.to_string().contains("subject@"));

    assert_eq!(found(&app, "user_identity=subject@example.com").await, 0);
    assert_eq!(found(&app, "entity_id=invoice-3").await, 0);
    assert_eq!(found(&app, "event_data.n=3").await, 0);
    assert_eq!(found(&app, "entity_id=invoice-4").await, 1);
    let kept = app.get_ok("/events?user_identity=other&limit=1000").await;
    assert_eq!(kept["events"].as_array().unwrap().len(), 1000);

    let (status, again) = post(
        &app,
        "/erasures",
        ADMIN,
        json!({"user_identity": "subject@example.com", "reason": "again"}),
    )
    .await;
    assert_eq!(
        (status, again),
        (
            200,
            json!({"erased": 0, "record": null, "kept_in_version_1_leaves": 0})
        )
    );
    let (status, _) = post(
        &app,
        "/erasures",
        ADMIN,
        json!({"user_identity": "a", "entity_id": "b", "reason": "both"}),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = post(
        &app,
        "/erasures",
        WRITER,
        json!({"entity_id": "invoice-4", "reason": "no"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, by_entity) = post(
        &app,
        "/erasures",
        ADMIN,
        json!({"entity_id": "invoice-4", "reason": "by entity"}),
    )
    .await;
    assert_eq!((status, by_entity["erased"].clone()), (201, json!(1)));
    // The erasure records name the admin as their user_identity; erasing that subject leaves
    // them whole.
    let (status, admin) = post(
        &app,
        "/erasures",
        ADMIN,
        json!({"user_identity": ADMIN.0, "reason": "the admin's own events"}),
    )
    .await;
    assert_eq!(
        (status, admin["erased"].clone()),
        (200, json!(0)),
        "{admin}"
    );
    assert_eq!(found(&app, "event_type=audit.erased").await, 2);
    checkpoint(&app).await;
    assert_verifies(&app);
    assert_documented_checker_agrees(&app).await;
}

/// SQLite: the erased values are in no database file afterwards (freed cells zeroed, the WAL
/// checkpointed and emptied), though they were before.
async fn erased_values_leave_the_database_files(backend: Backend) {
    assert_eq!(backend, Backend::Sqlite);
    let app = spawn_app(backend).await;
    let original = app.record(personal("kv9rt")).await;
    let files = || {
        let dir = app.db.sqlite_path().parent().unwrap().to_owned();
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.to_string_lossy().contains(".db"))
            .map(|path| std::fs::read(path).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let holds = |needle: &str| {
        files()
            .iter()
            .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    assert!(holds("kv9rt@example.com"), "the value is stored before");
    let id = original["id"].as_str().unwrap();
    let (status, _) = post(
        &app,
        &format!("/events/{id}/erase"),
        ADMIN,
        json!({"reason": "files"}),
    )
    .await;
    assert_eq!(status, 201);
    for value in [
        "kv9rt@example.com",
        "kv9rt-id",
        "kv9rt-property",
        "kv9rt-key",
    ] {
        assert!(!holds(value), "{value} is still in a database file");
    }

    // Values that later writes moved (page splits as the table grew past its root page) leave
    // no stale copy either.
    let pad = "p".repeat(300);
    for i in 0..40 {
        app.record(
            json!({"event_type": "t", "user_identity": format!("subject-{i}"),
                          "event_data": {"secret": format!("MARKER-{i}-xyzzy"), "pad": pad}}),
        )
        .await;
    }
    assert!(holds("MARKER-1-xyzzy"), "the values are stored before");
    for i in 0..40 {
        let (status, _) = post(
            &app,
            "/erasures",
            ADMIN,
            json!({"user_identity": format!("subject-{i}"), "reason": "files"}),
        )
        .await;
        assert_eq!(status, 201);
    }
    for i in 0..40 {
        assert!(
            !holds(&format!("MARKER-{i}-xyzzy")),
            "MARKER-{i} is still in a database file"
        );
        assert!(
            !holds(&format!("subject-{i}\"")),
            "subject-{i} is still in a database file"
        );
    }
}

/// Erasures committed together share a commit time, and the same event may be erased twice at
/// once: every answer is the record naming that event, one record per event, none empty.
async fn a_repeated_erasure_answers_with_the_record_naming_its_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut events = Vec::new();
    for i in 0..24 {
        events.push(app.record(personal(&format!("rep{i}"))).await);
    }
    let names_its_event = |event: &Value, record: &Value| {
        record["event_data"]["erased"] == json!([[event["seq"], event["seq"]]])
    };
    let tasks: Vec<_> = events
        .iter()
        .flat_map(|event| [event.clone(), event.clone()])
        .map(|event| {
            let path = format!("/events/{}/erase", event["id"].as_str().unwrap());
            let request = app
                .request(Method::POST, &path, Some(ADMIN))
                .json(&json!({"reason": "batch"}));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (event, status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for task in tasks {
        let (event, status, record) = task.await.unwrap();
        assert!(status == 201 || status == 200, "{status}: {record}");
        assert!(
            names_its_event(&event, &record),
            "event {}: {record}",
            event["seq"]
        );
    }
    for event in &events {
        let path = format!("/events/{}/erase", event["id"].as_str().unwrap());
        let (status, record) = post(&app, &path, ADMIN, json!({"reason": "again"})).await;
        assert_eq!(status, 200, "{record}");
        assert!(
            names_its_event(event, &record),
            "event {}: {record}",
            event["seq"]
        );
    }
    let records = app
        .get_ok("/events?event_type=audit.erased&limit=100")
        .await["events"]
        .clone();
    assert_eq!(records.as_array().unwrap().len(), events.len(), "{records}");
    checkpoint(&app).await;
    assert_verifies(&app);
}

/// An attacker who kept an event's values and salt secret from before its erasure and writes
/// them back (triggers dropped) leaves a valid leaf, but the erasure record still names the
/// event: verify reports the record.
async fn values_restored_after_an_erasure_are_caught(backend: Backend) {
    let app = spawn_app(backend).await;
    app.record(json!({"event_type": "before", "user_identity": "someone"}))
        .await;
    let original = app.record(personal("rst4q")).await;
    app.db
        .execute("CREATE TABLE saved AS SELECT * FROM events WHERE seq = 2")
        .await
        .unwrap();
    let id = original["id"].as_str().unwrap();
    let (status, record) = post(
        &app,
        &format!("/events/{id}/erase"),
        ADMIN,
        json!({"reason": "r"}),
    )
    .await;
    assert_eq!(status, 201);
    checkpoint(&app).await;
    assert_verifies(&app);

    let drop_trigger = match backend {
        Backend::Sqlite => "DROP TRIGGER events_are_never_updated",
        Backend::Postgres => "DROP TRIGGER events_are_never_changed ON events",
    };
    app.db.execute(drop_trigger).await.unwrap();
    app.db
        .execute(
            "UPDATE events SET user_identity = s.user_identity, entity_id = s.entity_id, \
             property = s.property, ip = s.ip, event_data = s.event_data, \
             idempotency_key = s.idempotency_key, salt_secret = s.salt_secret, erased = NULL, \
             redacted_at = NULL FROM saved s WHERE events.seq = s.seq AND events.tenant = s.tenant",
        )
        .await
        .unwrap();
    let report = verify(&app, &[]);
    let out = String::from_utf8_lossy(&report.stdout);
    assert!(
        !report.status.success(),
        "the restored values went unnoticed:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "seq {}: this erasure record names seq 2, which is not erased",
            record["seq"]
        )),
        "{out}"
    );
    let err = checker_failure(&app, None, "the restored values").await;
    assert!(err.contains("names seq 2, which is not erased"), "{err}");
}

/// A redaction takes the payload alone. An UPDATE the triggers allow that takes more of a
/// redacted event (its commitment computed from the salt served before) leaves a valid leaf, but
/// verify reports the fields no record names; an honest erasure after a redaction is no problem.
async fn fields_erased_beyond_their_record_are_caught(backend: Backend) {
    let app = spawn_app(backend).await;
    app.record(json!({"event_type": "before", "user_identity": "someone"}))
        .await;
    let attacked = app.record(personal("fx7k")).await;
    let honest = app.record(personal("fx8k")).await;
    for (event, action) in [
        (&honest, "redact"),
        (&honest, "erase"),
        (&attacked, "redact"),
    ] {
        let path = format!("/events/{}/{action}", event["id"].as_str().unwrap());
        let (status, record) = post(&app, &path, ADMIN, json!({"reason": "r"})).await;
        assert_eq!(status, 201, "{action}: {record}");
    }
    checkpoint(&app).await;
    assert_verifies(&app);

    let redacted = app
        .get_ok(&format!("/events/{}", attacked["id"].as_str().unwrap()))
        .await;
    let mut erased = redacted["erased"].clone();
    let salt = hex::decode(erased["salts"]["user_identity"].as_str().unwrap()).unwrap();
    let mut hasher = sha2::Sha256::new();
    hasher.update(&salt);
    hasher.update(b"\"fx7k@example.com\"");
    erased["commitments"]["user_identity"] = json!(hex::encode(hasher.finalize()));
    erased["salts"]
        .as_object_mut()
        .unwrap()
        .remove("user_identity");
    app.db
        .execute(&format!(
            "UPDATE events SET user_identity = NULL, erased = '{erased}' \
             WHERE tenant = 'default' AND seq = {}",
            attacked["seq"]
        ))
        .await
        .unwrap();
    let report = verify(&app, &[]);
    let out = String::from_utf8_lossy(&report.stdout);
    assert!(
        !report.status.success(),
        "the extra erasure went unnoticed:\n{out}"
    );
    assert!(
        out.contains("lost fields that no erasure record naming it names: user_identity"),
        "{out}"
    );
    let err = checker_failure(&app, None, "the extra erasure").await;
    assert!(
        err.contains("['user_identity'] lost, which no record naming it names"),
        "{err}"
    );
}

/// A writer's amendment without an `event_type` (`PUT /update_log/{id}`) is recorded as
/// `audit.amendment` with the client's fields: it is erased like any client event, by subject,
/// by id (`POST /events/{id}/erase` and seed 2's `DELETE /delete_log/{id}`) and by redaction,
/// and the log still verifies. The service's own records are still kept whole.
async fn a_writers_amendment_is_erased_like_any_client_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let original = app
        .record(
            json!({"event_type": "customer.updated", "user_identity": "jane-k4v",
                       "entity": "customer", "event_data": {"plan": "gold"}}),
        )
        .await;
    let original_id = original["id"].as_str().unwrap();
    let amend = |body: Value| {
        let app = &app;
        async move {
            let response = app
                .request(
                    Method::PUT,
                    &format!("/update_log/{original_id}"),
                    Some(WRITER),
                )
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "PUT /update_log {body}");
            let amendment: Value = response.json().await.unwrap();
            let id = amendment["event_uuid"].as_str().unwrap().to_owned();
            let event = app.get_ok(&format!("/events/{id}")).await;
            assert_eq!(event["event_type"], "audit.amendment");
            assert_eq!(event["amends"], original_id);
            id
        }
    };
    let by_subject = amend(
        json!({"user_identity": "jane-k4v", "entity_id": "jane-k4v-id",
                                  "event_data": {"ssn": "123-45-6789"}}),
    )
    .await;
    let by_id =
        amend(json!({"user_identity": "bob-k4v", "event_data": {"ssn": "987-65-4321"}})).await;
    let by_delete =
        amend(json!({"user_identity": "eve-k4v", "property": "eve-k4v-property"})).await;
    let redacted =
        amend(json!({"user_identity": "ann-k4v", "event_data": {"card": "4111-k4v"}})).await;

    // By subject: the original and the amendment that names her.
    let (status, erasure) = post(
        &app,
        "/erasures",
        ADMIN,
        json!({"user_identity": "jane-k4v", "reason": "gdpr"}),
    )
    .await;
    assert_eq!(status, 201, "{erasure}");
    assert_eq!(
        erasure["erased"], 2,
        "the original and its amendment: {erasure}"
    );
    // By id, and by seed 2's DELETE.
    let (status, by_id_record) = post(
        &app,
        &format!("/events/{by_id}/erase"),
        ADMIN,
        json!({"reason": "gdpr"}),
    )
    .await;
    assert_eq!(status, 201, "{by_id_record}");
    assert_eq!(by_id_record["event_type"], "audit.erased");
    let deleted = app
        .request(
            Method::DELETE,
            &format!("/delete_log/{by_delete}"),
            Some(ADMIN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 201);
    // Its payload alone.
    let (status, redaction) = post(
        &app,
        &format!("/events/{redacted}/redact"),
        ADMIN,
        json!({"reason": "gdpr"}),
    )
    .await;
    assert_eq!(status, 201, "{redaction}");
    assert_eq!(redaction["event_type"], "audit.redacted");

    for id in [&by_subject, &by_id, &by_delete] {
        let event = app.get_ok(&format!("/events/{id}")).await;
        for field in ["user_identity", "entity_id", "property", "event_data"] {
            assert_eq!(event[field], Value::Null, "{field} of {event}");
        }
        assert!(event["redacted_at"].is_string(), "{event}");
        assert!(!event.to_string().contains("k4v"), "{event}");
    }
    let event = app.get_ok(&format!("/events/{redacted}")).await;
    assert_eq!(event["event_data"], Value::Null, "{event}");
    assert_eq!(
        event["user_identity"], "ann-k4v",
        "a redaction takes the payload alone"
    );
    for query in [
        "user_identity=jane-k4v",
        "user_identity=bob-k4v",
        "user_identity=eve-k4v",
        "entity_id=jane-k4v-id",
        "property=eve-k4v-property",
        "event_data.ssn=123-45-6789",
        "event_data.ssn=987-65-4321",
        "event_data.card=4111-k4v",
    ] {
        assert_eq!(found(&app, query).await, 0, "{query}");
    }
    assert_eq!(found(&app, "event_type=audit.amendment").await, 4);

    // The service's own records are still kept whole.
    let records = [
        erasure["record"]["id"].as_str().unwrap(),
        by_id_record["id"].as_str().unwrap(),
        redaction["id"].as_str().unwrap(),
    ];
    for record in records {
        for action in ["erase", "redact"] {
            let (status, body) = post(
                &app,
                &format!("/events/{record}/{action}"),
                ADMIN,
                json!({"reason": "x"}),
            )
            .await;
            assert_eq!(status, 409, "{action} {record}: {body}");
        }
        let deleted = app
            .request(
                Method::DELETE,
                &format!("/delete_log/{record}"),
                Some(ADMIN),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(deleted.status(), 409, "DELETE /delete_log/{record}");
    }
    // Nor does a subject erasure naming the admin who erased take anything from them.
    let (status, body) = post(
        &app,
        "/erasures",
        ADMIN,
        json!({"user_identity": "admin", "reason": "x"}),
    )
    .await;
    assert_eq!((status, body["erased"].clone()), (200, json!(0)), "{body}");

    checkpoint(&app).await;
    assert_verifies(&app);
    let exported = export(&app);
    let report = verify_export(&app, &exported).await;
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stdout)
    );
    assert_documented_checker_agrees(&app).await;
}

crate::both_backends!(
    a_writers_amendment_is_erased_like_any_client_event,
    fields_erased_beyond_their_record_are_caught,
    values_restored_after_an_erasure_are_caught,
    a_repeated_erasure_answers_with_the_record_naming_its_event,
    one_event_is_erased_and_the_log_still_verifies,
    a_data_subject_is_erased_across_the_tenant,
    a_subject_erasure_killed_midway_is_all_or_nothing,
    retention_erases_old_events_in_batches,
);

#[tokio::test]
async fn erased_values_leave_the_sqlite_files() {
    erased_values_leave_the_database_files(Backend::Sqlite).await;
}

/// The server is SIGKILLed while it erases a data subject: after a restart, either all of the
/// subject's events are erased and the record is there, or none is and there is no record; the
/// log verifies either way.
async fn a_subject_erasure_killed_midway_is_all_or_nothing(backend: Backend) {
    use crate::helpers::{ServerProcess, TestDb, settings_for};

    let db = TestDb::new(backend).await;
    let mut server = ServerProcess::serve(&db);
    let http = crate::helpers::http_client();
    let base = format!("http://{}", server.address);
    let subject_events = 2000;
    for chunk in 0..subject_events * 5 / 1000 {
        let batch: Vec<Value> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|i| {
                let user = if i % 5 == 0 {
                    "killed@example.com"
                } else {
                    "other"
                };
                json!({"event_type": "t", "user_identity": user, "event_data": {"i": i}})
            })
            .collect();
        let response = http
            .post(format!("{base}/events"))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let erasure = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.post(format!("{base}/erasures"))
                .basic_auth(ADMIN.0, Some(ADMIN.1))
                .json(&json!({"user_identity": "killed@example.com", "reason": "kill test"}))
                .send()
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    server.kill();
    let answered = erasure.await.unwrap();

    let server = ServerProcess::serve(&db);
    let base = format!("http://{}", server.address);
    let get = |path: String| {
        let http = http.clone();
        async move {
            http.get(path)
                .basic_auth(ADMIN.0, Some(ADMIN.1))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let records = get(format!("{base}/events?event_type=audit.erased")).await["events"]
        .as_array()
        .unwrap()
        .len();
    let mut named = 0;
    let mut path = format!("{base}/events?user_identity=killed@example.com&limit=1000");
    loop {
        let page = get(path.clone()).await;
        named += page["events"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!(
                    "{base}/events?user_identity=killed@example.com&limit=1000&cursor={cursor}"
                )
            }
            None => break,
        }
    }
    match records {
        0 => assert_eq!(named, subject_events, "no record, so nothing erased"),
        1 => assert_eq!(named, 0, "a record, so everything erased"),
        n => panic!("{n} erasure records"),
    }
    if answered.is_ok_and(|response| response.status() == 201) {
        assert_eq!(records, 1, "an acknowledged erasure is committed");
    }
    let report = std::process::Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["--database-url", &db.url, "verify"])
        .env(
            "AUDITOR_INTEGRITY__SIGNING_KEY_FILE",
            &settings_for(&db).integrity.signing_key_file,
        )
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stdout)
    );
}

/// Events recorded longer ago than the retention period lose their personal fields in the
/// background, a batch per `audit.erased` record; newer ones keep theirs, and the log verifies.
async fn retention_erases_old_events_in_batches(backend: Backend) {
    use auditor::store::Store;

    use crate::helpers::{TestDb, settings_for, spawn_with, submission};

    let db = TestDb::new(backend).await;
    let old_events: Vec<Value> = (0..30)
        .map(|i| json!({"event_type": "old", "user_identity": format!("old-{i}"), "event_data": {"i": i}}))
        .collect();
    let new_events = json!([{"event_type": "new", "user_identity": "recent"}]);
    // A writer's amendment without an event_type, as `AuditLog::amend` records it: the
    // client's fields under the service's `audit.amendment` type.
    let amendment = {
        use auditor::model::{Limits, NewEvent, RawEvent};
        let raw: RawEvent = serde_json::from_value(json!({
            "event_type": "audit.amendment", "user_identity": "old-amender", "action": "update",
            "event_data": {"ssn": "123-45-6789"}
        }))
        .unwrap();
        let mut amendment = submission("default", json!([]));
        amendment.events = vec![NewEvent::parse_own(raw, &Limits::default()).unwrap()];
        amendment
    };
    let long_ago = time::OffsetDateTime::now_utc() - time::Duration::days(40);
    macro_rules! load {
        ($store:expr) => {{
            let store = $store;
            store.migrate().await.unwrap();
            store
                .append_at(
                    &[
                        submission("default", Value::from(old_events.clone())),
                        amendment.clone(),
                    ],
                    long_ago,
                )
                .await
                .unwrap();
            store
                .append(&[submission("default", new_events.clone())])
                .await
                .unwrap();
        }};
    }
    match backend {
        Backend::Sqlite => load!(db.sqlite().await),
        Backend::Postgres => load!(db.postgres().await),
    }
    let mut settings = settings_for(&db);
    settings.retention.max_age_days = 30;
    settings.retention.check_interval_secs = 1;
    settings.retention.batch_events = 8;
    let app = spawn_with(db, settings).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if found(&app, "event_type=old&user_identity=old-29").await == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let records = app.get_ok("/events?event_type=audit.erased").await["events"].clone();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 4, "31 events, 8 a batch: {records:?}");
    assert_eq!(records[0]["recorded_by"], "auditor-retention");
    assert_eq!(records[0]["event_data"]["erased"], json!([[1, 8]]));
    assert_eq!(
        records[0]["event_data"]["reason"],
        "retention: recorded more than 30 days ago"
    );
    assert_eq!(
        found(&app, "user_identity=recent").await,
        1,
        "newer events keep theirs"
    );
    assert_eq!(
        records[3]["event_data"]["erased"],
        json!([[25, 31]]),
        "the amendment too"
    );
    assert_eq!(found(&app, "user_identity=old-amender").await, 0);
    assert_eq!(found(&app, "event_data.ssn=123-45-6789").await, 0);
    let old = app.get_ok("/events?event_type=old&limit=100").await["events"].clone();
    assert!(
        old.as_array()
            .unwrap()
            .iter()
            .all(|e| e["user_identity"].is_null()
                && e["event_data"].is_null()
                && e["erased"].is_object())
    );
    checkpoint(&app).await;
    assert_verifies(&app);
    assert_documented_checker_agrees(&app).await;
}
