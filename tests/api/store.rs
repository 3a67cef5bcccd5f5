//! The storage conformance suite: one set of tests, run against every `Store` implementation.

use auditor::auth::{NewUser, Role};
use auditor::integrity::{Digest, chain_hash, leaf_hash};
use auditor::model::FIELDS;
use auditor::model::event::truncate_to_micros;
use auditor::model::fields::{Flag, Kind};
use auditor::model::{EventQuery, Order, Seq, Submission, TenantId};
use auditor::store::{Appended, SqliteStore, Store, StoreError, UsersWatch};
use serde_json::json;
use time::OffsetDateTime;

use crate::helpers::{Backend, TestDb, created, redaction, submission};

async fn migrations_are_reported_then_applied<S: Store>(store: S, db: &TestDb) {
    let all = crate::helpers::migrations_after(db.backend, 0);
    assert_eq!(all.first(), Some(&1));
    assert_eq!(store.pending_migrations().await.unwrap(), all);
    store.migrate().await.unwrap();
    assert!(store.pending_migrations().await.unwrap().is_empty());
    store.migrate().await.unwrap();
}

async fn appends_chain_each_tenant_separately<S: Store>(store: S, _db: &TestDb) {
    store.migrate().await.unwrap();
    let batch = [
        submission(
            "a",
            json!([{"event_type": "x", "user_identity": "u"}, {"event_type": "y", "user_identity": "u"}]),
        ),
        submission("b", json!([{"event_type": "z", "user_identity": "u"}])),
        submission(
            "a",
            json!([{"event_type": "w", "user_identity": "u", "event_data": {"k": [1, {"n": null}]}}]),
        ),
    ];
    let outcomes = store.append(&batch).await.unwrap();
    assert_eq!(outcomes.len(), 3);
    let a_seqs: Vec<i64> = created(&outcomes[0])
        .iter()
        .chain(created(&outcomes[2]))
        .map(|e| e.seq.0)
        .collect();
    assert_eq!(a_seqs, vec![1, 2, 3]);
    assert_eq!(created(&outcomes[1])[0].seq, Seq(1));

    let more = store
        .append(&[submission(
            "b",
            json!([{"event_type": "v", "user_identity": "u"}]),
        )])
        .await
        .unwrap();
    assert_eq!(created(&more[0])[0].seq, Seq(2));

    for tenant in ["a", "b"] {
        let query = EventQuery {
            limit: 1000,
            ..EventQuery::default()
        };
        let events = store.query(&TenantId::new(tenant), &query).await.unwrap();
        let mut prev = Digest::ZERO;
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event.seq.0, index as i64 + 1);
            assert_eq!(event.tenant.as_str(), tenant);
            assert_eq!(event.prev_hash, prev);
            assert_eq!(event.hash, chain_hash(&prev, &leaf_hash(event).unwrap()));
            prev = event.hash;
        }
    }
    // What was stored reads back exactly as it was returned at append time.
    let appended = &created(&outcomes[2])[0];
    let read = store
        .get(&TenantId::new("a"), appended.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&read, appended);
    assert!(
        store
            .get(&TenantId::new("b"), appended.id)
            .await
            .unwrap()
            .is_none(),
        "tenants are isolated"
    );
}

async fn idempotency_keys_replay_or_conflict<S: Store>(store: S, _db: &TestDb) {
    store.migrate().await.unwrap();
    let keyed = json!([{"event_type": "x", "user_identity": "u", "idempotency_key": "k"}]);
    let first = store
        .append(&[submission("t", keyed.clone())])
        .await
        .unwrap();
    let original = created(&first[0]).to_vec();
    let again = store
        .append(&[
            submission("t", keyed),
            submission(
                "t",
                json!([{"event_type": "other", "user_identity": "u", "idempotency_key": "k"}]),
            ),
            submission(
                "other-tenant",
                json!([{"event_type": "other", "user_identity": "u", "idempotency_key": "k"}]),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], Appended::Replayed(original));
    assert_eq!(again[1], Appended::KeyConflict("k".into()));
    assert!(
        matches!(again[2], Appended::Created { .. }),
        "keys are per tenant"
    );
}

async fn the_schema_refuses_updates_and_deletes<S: Store>(store: S, db: &TestDb) {
    store.migrate().await.unwrap();
    store
        .append(&[submission(
            "default",
            json!([{"event_type": "x", "user_identity": "u"}]),
        )])
        .await
        .unwrap();
    for sql in [
        "UPDATE events SET event_type = 'forged'",
        "DELETE FROM events",
    ] {
        let error = db.execute(sql).await.expect_err(sql).to_string();
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    if db.backend == Backend::Postgres {
        let error = db
            .execute("TRUNCATE events")
            .await
            .expect_err("truncate")
            .to_string();
        assert!(error.contains("append-only"), "{error}");
    }
    let events = store
        .query(&TenantId::default(), &EventQuery::default())
        .await
        .unwrap();
    assert_eq!(events[0].event_type, "x");
}

/// The one UPDATE the schema lets through is a redaction: the payload erased and `redacted_at`
/// set. A redaction that also changes any other declared column is refused, so a column added to
/// the declaration cannot be rewritten under cover of one.
async fn a_redaction_may_change_no_other_column<S: Store>(store: S, db: &TestDb) {
    store.migrate().await.unwrap();
    let every_field = json!([{
        "event_type": "x", "user_identity": "u", "action": "create", "entity": "e",
        "entity_id": "1", "property": "p", "source": "s", "ip": "10.0.0.1",
        "outcome": "success", "occurred_at": "2024-05-01T12:00:00Z", "event_data": {"k": 1},
        "idempotency_key": "key",
    }]);
    store
        .append(&[submission("default", every_field)])
        .await
        .unwrap();
    let redact = match db.backend {
        Backend::Sqlite => "event_data = NULL, redacted_at = 1",
        Backend::Postgres => "event_data = NULL, redacted_at = now()",
    };
    for field in FIELDS.iter().filter(|field| !field.is(Flag::Erasable)) {
        let name = field.name;
        let other = match (name, field.kind, db.backend) {
            ("action", ..) => "'delete'".to_owned(),
            ("outcome", ..) => "'failure'".to_owned(),
            (_, Kind::Text, _) => "'forged'".to_owned(),
            (_, Kind::Integer, _) => format!("{name} + 1000"),
            (_, Kind::Uuid, Backend::Sqlite) => "randomblob(16)".to_owned(),
            (_, Kind::Uuid, Backend::Postgres) => "gen_random_uuid()".to_owned(),
            (_, Kind::Time, Backend::Sqlite) => format!("{name} + 1"),
            (_, Kind::Time, Backend::Postgres) => format!("{name} + interval '1 microsecond'"),
            (_, Kind::Bytes, Backend::Sqlite) => "randomblob(32)".to_owned(),
            (_, Kind::Bytes, Backend::Postgres) => "sha256('forged')".to_owned(),
            (_, Kind::Json, _) => panic!("say here how to change {name}"),
        };
        let sql = format!("UPDATE events SET {redact}, {name} = {other}");
        let error = db.execute(&sql).await.expect_err(&sql).to_string();
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    if db.backend == Backend::Postgres {
        // The trigger compares whole rows less the columns it names: those must be exactly the
        // redactable ones (SQLite's trigger, which names every column, has a unit test).
        let definition = db
            .fetch_strings("SELECT pg_get_functiondef('events_allow_only_redaction'::regproc)")
            .await
            .unwrap()
            .remove(0);
        assert!(definition.contains("to_jsonb(NEW)"), "{definition}");
        let mut ignored: Vec<&str> = definition
            .split("- '")
            .skip(1)
            .filter_map(|rest| rest.split('\'').next())
            .collect();
        ignored.sort_unstable();
        ignored.dedup();
        let mut redactable: Vec<&str> = FIELDS
            .iter()
            .filter(|field| field.is(Flag::Erasable))
            .map(|field| field.name)
            .collect();
        redactable.sort_unstable();
        assert_eq!(ignored, redactable, "{definition}");
    }
    db.execute(&format!("UPDATE events SET {redact}"))
        .await
        .expect("a redaction alone goes through");
}

async fn users_are_added_found_listed_and_removed<S: Store>(store: S, _db: &TestDb) {
    store.migrate().await.unwrap();
    let user = NewUser {
        name: "ops".into(),
        password_hash: "$argon2id$fake".into(),
        role: Role::Reader,
        tenant: auditor::model::TenantScope::One(auditor::model::TenantId::new("acme")),
    };
    store.add_user(&user).await.unwrap();
    assert!(matches!(
        store.add_user(&user).await,
        Err(StoreError::Conflict(_))
    ));
    let found = store.find_user("ops").await.unwrap().unwrap();
    assert_eq!((found.name.as_str(), found.role), ("ops", Role::Reader));
    assert_eq!(found.tenant.as_str(), "acme");
    assert!(store.find_user("nobody").await.unwrap().is_none());
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    // Counted are the users of the role who act in every tenant.
    assert_eq!(store.count_users_with_role(Role::Reader).await.unwrap(), 0);
    assert_eq!(store.count_users_with_role(Role::Admin).await.unwrap(), 0);
    store.remove_user("ops").await.unwrap();
    assert!(matches!(
        store.remove_user("ops").await,
        Err(StoreError::NotFound)
    ));
}

async fn sessions_are_added_found_touched_and_removed<S: Store>(store: S, _db: &TestDb) {
    use auditor::model::session::SessionRecord;
    store.migrate().await.unwrap();
    let now = truncate_to_micros(OffsetDateTime::now_utc());
    let session = |byte: u8, begun: OffsetDateTime| SessionRecord {
        secret_hash: Digest([byte; 32]),
        user_name: format!("user{byte}"),
        credential_tag: Digest([byte ^ 0xff; 32]),
        created_at: begun,
        last_seen_at: begun,
        granted: (byte == 2).then(|| auditor::model::session::Granted {
            scopes: auditor::model::Scopes::parse("events:read").unwrap(),
            tenants: auditor::model::TenantScope::parse("acme").unwrap(),
            expires_at: begun + time::Duration::hours(1),
        }),
    };
    let fresh = session(1, now);
    let old = session(2, now - time::Duration::hours(30));
    store.add_session(&fresh).await.unwrap();
    store.add_session(&old).await.unwrap();
    assert_eq!(
        store.find_session(&old.secret_hash).await.unwrap(),
        Some(old.clone()),
        "with its grant"
    );
    assert_eq!(
        store.find_session(&fresh.secret_hash).await.unwrap(),
        Some(fresh.clone())
    );
    assert!(
        store
            .find_session(&Digest([3; 32]))
            .await
            .unwrap()
            .is_none()
    );

    // Touching moves the time forward only.
    let later = now + time::Duration::minutes(5);
    store
        .touch_session(&fresh.secret_hash, later)
        .await
        .unwrap();
    store.touch_session(&fresh.secret_hash, now).await.unwrap();
    let touched = store
        .find_session(&fresh.secret_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(touched.last_seen_at, later);
    assert_eq!(touched.created_at, now);

    let removed = store
        .remove_expired_sessions(
            now - time::Duration::hours(8),
            now - time::Duration::hours(24),
        )
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(
        store
            .find_session(&old.secret_hash)
            .await
            .unwrap()
            .is_none()
    );
    store.remove_session(&fresh.secret_hash).await.unwrap();
    store.remove_session(&fresh.secret_hash).await.unwrap();
    assert!(
        store
            .find_session(&fresh.secret_hash)
            .await
            .unwrap()
            .is_none()
    );
}

/// The watch's generation once it moves off `from`, within a second.
async fn generation_after(watch: &UsersWatch, from: Option<u64>, what: &str) -> u64 {
    let started = std::time::Instant::now();
    loop {
        match watch.generation() {
            Some(now) if Some(now) != from => return now,
            _ => {}
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{what}: the users generation did not move within a second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Every kind of change to `users` moves the generation, through this store or by hand;
/// appending events does not.
async fn the_users_watch_sees_every_change_to_users<S: Store>(store: S, db: &TestDb) {
    store.migrate().await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watch = store.watch_users(shutdown.clone());
    let mut generation = generation_after(&watch, None, "start").await;
    let user = NewUser {
        name: "ops".into(),
        password_hash: "$argon2id$fake".into(),
        role: Role::Reader,
        tenant: auditor::model::TenantScope::One(auditor::model::TenantId::new("acme")),
    };
    store.add_user(&user).await.unwrap();
    generation = generation_after(&watch, Some(generation), "insert").await;
    db.execute("UPDATE users SET role = 'writer' WHERE name = 'ops'")
        .await
        .unwrap();
    generation = generation_after(&watch, Some(generation), "update").await;
    db.execute("DELETE FROM users").await.unwrap();
    generation = generation_after(&watch, Some(generation), "delete").await;

    store.append(&[one("x")]).await.unwrap();
    let appended = std::time::Instant::now();
    // Well past the SQLite poll and a PostgreSQL heartbeat.
    while appended.elapsed() < std::time::Duration::from_millis(400) {
        // `None` would only mean a heartbeat late on a busy machine, not a change.
        let now = watch.generation();
        assert!(
            now.is_none_or(|g| g == generation),
            "an append is no change"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}

async fn the_last_admin_cannot_be_removed<S: Store>(store: S, _db: &TestDb) {
    store.migrate().await.unwrap();
    use auditor::auth::users;
    users::add(
        &store,
        "root",
        Role::Admin,
        auditor::model::TenantScope::All,
        "a-long-password-1".into(),
    )
    .await
    .unwrap();
    let error = users::remove(&store, "root").await.expect_err("last admin");
    assert!(error.to_string().contains("last admin"));
    users::add(
        &store,
        "root2",
        Role::Admin,
        auditor::model::TenantScope::All,
        "a-long-password-2".into(),
    )
    .await
    .unwrap();
    users::remove(&store, "root").await.unwrap();
    let weak = users::add(
        &store,
        "weak",
        Role::Reader,
        auditor::model::TenantScope::All,
        "short".into(),
    )
    .await;
    assert!(weak.is_err(), "short passwords are refused");
    let bad_name = users::add(
        &store,
        "a:b",
        Role::Reader,
        auditor::model::TenantScope::All,
        "a-long-password-3".into(),
    )
    .await;
    assert!(bad_name.is_err(), "`:` cannot appear in a Basic user name");
}

/// With statistics on a few thousand events, every documented filter is planned through an
/// index (named where the filter is selective enough for one specific index to be the right one).
/// How SQLite's plan names the read of a key's blocks in a run of postings (migration 0010):
/// by `(run, field, value)`, from a `first_seq` on.
const POSTINGS_PLAN: &str =
    "posting_lists USING PRIMARY KEY (run=? AND field=? AND value=? AND first_seq<?";

async fn every_documented_filter_is_planned_through_an_index<S: Store>(store: S, db: &TestDb) {
    store.migrate().await.unwrap();
    let batch: Vec<serde_json::Value> = (0..3000)
        .map(|i| {
            let action = ["create", "read", "update", "delete"][i % 4];
            json!({
                "event_type": format!("t{}", i % 50), "user_identity": format!("u{}", i % 300),
                "action": action,
                "entity": format!("e{}", i % 40), "entity_id": format!("id-{i}"),
                "property": format!("p{}", i % 20), "source": format!("s{}", i % 10),
                "ip": format!("10.0.{}.{}", i / 256 % 4, i % 256),
                "outcome": if i % 100 == 0 { "failure" } else { "success" },
                "idempotency_key": format!("k{i}"),
                "occurred_at": format!("2024-01-{:02}T{:02}:00:00Z", 1 + i / 200, i % 24),
                "event_data": {"n": i, "group": i % 7, "a.b": {"c": i}, "имя": format!("n{i}")}
            })
        })
        .collect();
    let first = store
        .append(&[submission("default", json!(batch))])
        .await
        .unwrap();
    let some_id = created(&first[0])[5].id;
    // PostgreSQL: VACUUM also merges the GIN pending list, which at this size holds every row
    // (1 MiB, migration 0006) and makes the planner cost the index above a scan of 3000 rows.
    let analyze = match db.backend {
        Backend::Sqlite => "ANALYZE",
        Backend::Postgres => "VACUUM ANALYZE",
    };
    db.execute(analyze).await.unwrap();

    let mut cases = vec![
        ("user_identity=u7".to_owned(), Some("events_user_identity")),
        ("event_type=t7".to_owned(), Some("events_event_type")),
        ("entity=e7".to_owned(), Some("events_entity")),
        ("entity_id=id-77".to_owned(), Some("events_entity_id")),
        ("property=p7".to_owned(), Some("events_property")),
        ("source=s7".to_owned(), Some("events_source")),
        ("ip=10.0.1.7".to_owned(), Some("events_ip")),
        ("idempotency_key=k77".to_owned(), Some("events_idempotency")),
        (format!("amends={some_id}"), Some("events_amends")),
        (format!("id={some_id}"), None),
        ("outcome=failure".to_owned(), None),
        ("action=delete".to_owned(), None),
        ("recorded_by=tester".to_owned(), None),
        (
            "since=2024-01-05T10:00:00Z&until=2024-01-05T11:00:00Z".to_owned(),
            Some("events_occurred_at"),
        ),
    ];
    // SQLite: the postings (migrations 0009, 0010) serve every filter but `id`,
    // `idempotency_key` and `amends`; a run's blocks of a key are read by `(run, field, value)`
    // from the cursor's block on, and each event they name by its key (the table's rowid,
    // migration 0017), which is what keeps a page cheap.
    let data_index = match db.backend {
        Backend::Sqlite => POSTINGS_PLAN,
        Backend::Postgres => "events_filters",
    };
    cases.push(("event_data.n=77".to_owned(), Some(data_index)));
    // A key holding a dot, quoted, and a key in another script are served alike.
    cases.push(("event_data.\"a.b\".c=77".to_owned(), Some(data_index)));
    cases.push(("event_data.имя=n77".to_owned(), Some(data_index)));
    if db.backend == Backend::Sqlite {
        // A time range's page is chosen from `events_occurred_at` alone: it holds the key
        // (migration 0017), so no row is read before the page is known.
        let range = EventQuery::parse(&[
            ("since".to_owned(), "2024-01-05T10:00:00Z".to_owned()),
            ("until".to_owned(), "2024-01-05T11:00:00Z".to_owned()),
        ])
        .unwrap();
        let plan = store.explain(&TenantId::default(), &range).await.unwrap();
        assert!(
            plan.contains("USING COVERING INDEX events_occurred_at"),
            "{plan}"
        );
        for query in [
            "event_data.n=77.0",
            "event_data.group=3&event_data.n=77",
            "event_data.missing=\"some text\"",
            "event_data.group=true",
            "event_data.group=3&user_identity=u7",
            "event_data.group=0&event_data.\"a.b\".c=77",
        ] {
            cases.push((query.to_owned(), Some(data_index)));
        }
        // Paging forward and backward reads the index from the cursor on, without a sort.
        let page = EventQuery::parse(&[
            ("event_data.group".to_owned(), "3".to_owned()),
            ("order".to_owned(), "desc".to_owned()),
        ])
        .unwrap();
        for (order, after) in [(Order::Asc, Some(Seq(100))), (Order::Desc, Some(Seq(2000)))] {
            let query = EventQuery {
                order,
                after,
                ..page.clone()
            };
            let plan = store.explain(&TenantId::default(), &query).await.unwrap();
            assert!(
                plan.contains(data_index)
                    && plan.contains("SEARCH events USING INTEGER PRIMARY KEY (rowid=?)")
                    && !plan.contains("TEMP B-TREE"),
                "{order:?}: {plan}"
            );
        }
    }
    // PostgreSQL: the partitions that hold rows must be read through an index. The months
    // ahead are empty and analysed as such, so a Seq Scan of them is the right plan (it reads
    // nothing).
    let mut populated = Vec::new();
    if db.backend == Backend::Postgres {
        populated = db
            .fetch_strings("SELECT DISTINCT tableoid::regclass::text FROM events")
            .await
            .unwrap();
        assert!(!populated.is_empty());
    }
    for (query, index) in cases {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let parsed = EventQuery::parse(&pairs).unwrap();
        let plan = store.explain(&TenantId::default(), &parsed).await.unwrap();
        match db.backend {
            Backend::Sqlite => assert!(
                plan.contains("USING INDEX")
                    || plan.contains("USING COVERING INDEX")
                    || plan.contains("USING PRIMARY KEY")
                    || plan.contains("USING INTEGER PRIMARY KEY"),
                "{query}: {plan}"
            ),
            Backend::Postgres => {
                for partition in &populated {
                    let scanned = plan.contains(&format!("Seq Scan on {partition} "));
                    assert!(!scanned, "{query}: {plan}");
                }
            }
        }
        if let Some(index) = index {
            // On PostgreSQL the plan names the partitions' indexes, which derive from `index`;
            // since migration 0006 one GIN index, `events_filters`, serves the equality filters
            // that have no B-tree, and idempotency keys are found in their own table.
            let names = match db.backend {
                Backend::Sqlite => match index {
                    "events_user_identity"
                    | "events_event_type"
                    | "events_entity"
                    | "events_entity_id"
                    | "events_property"
                    | "events_source"
                    | "events_ip" => {
                        vec![POSTINGS_PLAN.to_owned()]
                    }
                    index => vec![index.to_owned()],
                },
                Backend::Postgres => match index {
                    "events_event_type" | "events_entity" | "events_entity_id"
                    | "events_property" | "events_source" | "events_ip" => {
                        partition_indexes(db, "events_filters").await
                    }
                    "events_idempotency" => vec!["idempotency_keys_pkey".to_owned()],
                    index => partition_indexes(db, index).await,
                },
            };
            let used = names.iter().any(|name| {
                plan.contains(&format!("{name} ")) || plan.contains(&format!("{name})"))
            });
            assert!(
                used,
                "{query} should use the {index} index ({names:?}): {plan}"
            );
        }
    }
}

/// What `event_data.<path>=value` means, written out: the path goes through objects only and
/// ends at a scalar; numbers compare by value (1 = 1.0), and no other type equals across types.
fn holds(
    data: Option<&serde_json::Map<String, serde_json::Value>>,
    path: &str,
    value: &str,
) -> bool {
    use auditor::model::JsonScalar;
    use serde_json::Value;
    let path = auditor::model::JsonPath::parse(path).unwrap();
    let mut segments = path.segments().iter();
    let first = segments
        .next()
        .and_then(|key| data.and_then(|d| d.get(key)));
    let leaf = segments.fold(first, |node, key| {
        node.and_then(|n| n.as_object()?.get(key))
    });
    match (
        leaf,
        JsonScalar::parse(value).expect("an exact query value"),
    ) {
        (Some(Value::Null), JsonScalar::Null) => true,
        (Some(Value::Bool(a)), JsonScalar::Bool(b)) => *a == b,
        (Some(Value::Number(a)), JsonScalar::Integer(b)) => match a.as_i64() {
            Some(a) => a == b,
            None => a.as_f64() == Some(b as f64),
        },
        (Some(Value::Number(a)), JsonScalar::Float(b)) => a.as_f64() == Some(b),
        (Some(Value::String(a)), JsonScalar::String(b)) => *a == b,
        _ => false,
    }
}

/// Path queries return exactly the events whose payload holds the value, in both orders and
/// across pages; on SQLite they are answered through `event_data_index` (migration 0003).
async fn event_data_paths_match_exactly_the_events_holding_the_value<S: Store>(
    store: S,
    _db: &TestDb,
) {
    store.migrate().await.unwrap();
    let long = "é".repeat(150);
    let long_other = format!("{}x", "é".repeat(149));
    let prefix = "é".repeat(128);
    let payloads = json!([
        {"n": 1}, {"n": 1.0}, {"n": "1"}, {"n": true}, {"n": null}, {"n": [1]}, {"n": {"m": 1}},
        {"n": 1.5}, {"n": -0.0}, {"n": 0}, {"n": 9007199254740991_i64}, {"n": 1e3},
        {"a": {"b": {"c": "deep"}}, "n": 2}, {"a": {"b": "x"}}, {"a": {"b": 1}},
        {"a.b": 1}, {"a.b": 5, "a": {"b": 5}}, {"a": [{"b": 1}]},
        {"a-b": {"c_d": 7}}, {"9": 9}, {"tags": ["x", "y"]}, {"tags": "x"},
        {"text": long}, {"text": long_other}, {"text": prefix}, {"text": ""}, {"text": "1"},
        {"text": "ünï\"cödé"}, {"flag": false}, {"flag": true}, {"flag": "true"},
        {"имя": "Анна"}, {"имя": {"полное": "Анна"}}, {"a.b": {"c": 1}}, {"a": {"b": {"c": 1}}},
        {"we\"ird": {"x": 1}}, {"we": {"ird": {"x": 1}}}, {"": 0}, {"": {"": 0}}, {"a b": 1},
        {"k\\\n\u{1}.": true},
    ]);
    let mut events: Vec<serde_json::Value> = payloads
        .as_array()
        .unwrap()
        .iter()
        .map(|data| json!({"event_type": "t", "user_identity": "u", "event_data": data}))
        .collect();
    for i in 0..40 {
        let data = match i % 3 {
            0 => json!({"page": 1, "i": i % 4}),
            1 => json!({"page": "1", "i": i % 4}),
            _ => json!({"page": 1.0, "i": i % 4, "other": true}),
        };
        events.push(json!({"event_type": "t", "user_identity": "u", "event_data": data}));
    }
    events.push(json!({"event_type": "t", "user_identity": "u"}));
    store
        .append(&[submission("default", json!(events))])
        .await
        .unwrap();
    // Another tenant's identical payloads must not show up.
    store
        .append(&[submission("other", events[..5].to_vec().into())])
        .await
        .unwrap();
    let tenant = TenantId::default();
    let all = store.scan(&tenant, Seq(0), 1000).await.unwrap();

    let quoted = |s: &str| format!("\"{s}\"");
    let cases: Vec<Vec<(String, String)>> = [
        vec![("n", "1")],
        vec![("n", "1.0")],
        vec![("n", "\"1\"")],
        vec![("n", "true")],
        vec![("n", "null")],
        vec![("n", "1.5")],
        vec![("n", "0")],
        vec![("n", "-0.0")],
        vec![("n", "9007199254740991")],
        vec![("n", "1000")],
        vec![("n", "[1]")],
        vec![("n.m", "1")],
        vec![("a.b.c", "deep")],
        vec![("a.b", "x")],
        vec![("a.b", "1")],
        vec![("a.b", "5")],
        vec![("a-b.c_d", "7")],
        vec![("9", "9")],
        vec![("tags", "x")],
        vec![("tags.0", "x")],
        vec![("text", long.as_str())],
        vec![("text", long_other.as_str())],
        vec![("text", prefix.as_str())],
        vec![("text", "")],
        vec![("text", "1")],
        vec![("text", "ünï\"cödé")],
        vec![("flag", "false")],
        vec![("flag", "true")],
        vec![("flag", &quoted("true"))],
        vec![("page", "1"), ("i", "2")],
        vec![("page", "\"1\""), ("i", "1")],
        vec![("page", "1"), ("other", "true"), ("i", "2")],
        vec![("missing", "1")],
        vec![("имя", "Анна")],
        vec![("имя.полное", "Анна")],
        vec![("\"a.b\".c", "1")],
        vec![("a.b.c", "1")],
        vec![("\"a.b\"", "1")],
        vec![("\"a.b\"", "5")],
        vec![("a.\"b.c\"", "1")],
        vec![("\"we\\\"ird\".x", "1")],
        vec![("we.ird.x", "1")],
        vec![("\"\"", "0")],
        vec![("\"\".\"\"", "0")],
        vec![("\"a b\"", "1")],
        vec![("\"k\\\\\\n\\u0001.\"", "true")],
    ]
    .into_iter()
    .map(|pairs| {
        pairs
            .into_iter()
            .map(|(path, value)| (format!("event_data.{path}"), value.to_owned()))
            .collect()
    })
    .chain([vec![("event_data.page".to_owned(), "1".to_owned())]])
    .collect();
    for pairs in cases {
        let expected: Vec<Seq> = all
            .iter()
            .filter(|event| {
                pairs.iter().all(|(name, value)| {
                    holds(
                        event.event_data.as_ref(),
                        &name["event_data.".len()..],
                        value,
                    )
                })
            })
            .map(|event| event.seq)
            .collect();
        for (order, limit) in [(Order::Asc, 1000), (Order::Asc, 3), (Order::Desc, 4)] {
            let mut query = EventQuery::parse(&pairs).unwrap();
            query.order = order;
            query.limit = limit;
            let mut seen = Vec::new();
            loop {
                let rows = store.query(&tenant, &query).await.unwrap();
                assert!(rows.iter().all(|e| e.tenant == tenant));
                let page = query.page(rows);
                seen.extend(page.events.iter().map(|e| e.seq));
                match page.next_cursor {
                    Some(cursor) => query.after = Some(cursor.after),
                    None => break,
                }
            }
            if order == Order::Desc {
                seen.reverse();
            }
            assert_eq!(seen, expected, "{pairs:?} {order:?} by {limit}");
        }
    }
}

/// Every `event_data` leaf indexed, as `(tenant, path, value, seq)` with `value` quoted so that
/// its SQLite type shows: the rows of `event_data_index` before migration 0009, the `event_data`
/// postings of the live runs after it. A real that is a whole number reads as the integer, as
/// postings hold it.
fn index_rows(db: &TestDb) -> Vec<(String, String, String, i64)> {
    let conn = db.sqlite_connection();
    let before_postings = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'event_data_index'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
        == 1;
    let sql = if before_postings {
        "SELECT tenant, path, quote(CASE WHEN typeof(value) = 'real' \
             AND value >= -9223372036854775808.0 AND value < 9223372036854775808.0 \
             AND value = CAST(value AS INTEGER) THEN CAST(value AS INTEGER) ELSE value END), seq \
         FROM event_data_index ORDER BY 1, 2, 3, 4"
            .to_owned()
    } else {
        format!(
            "{} SELECT r.tenant, substr(p.field, 12), quote(p.value), p.seq \
             FROM postings AS p JOIN posting_runs AS r ON r.id = p.run AND r.state = 'live' \
             WHERE p.field LIKE 'event\\_data.%' ESCAPE '\\' ORDER BY 1, 2, 3, 4",
            crate::helpers::POSTINGS_CTE
        )
    };
    let mut select = conn.prepare(&sql).unwrap();
    select
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Applies the SQLite migrations numbered up to `last` only, as an older binary would have:
/// those after the database's `user_version`, which then says `last`.
fn migrate_sqlite_to(db: &TestDb, last: i64) {
    let migrations =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations/sqlite");
    let mut names: Vec<String> = std::fs::read_dir(&migrations)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let conn = db.sqlite_connection();
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    for name in names {
        let version: i64 = name[..4].parse().unwrap();
        if version > applied && version <= last {
            let sql = std::fs::read_to_string(migrations.join(&name)).unwrap();
            conn.execute_batch(&format!(
                "BEGIN;\n{sql}\n;PRAGMA user_version = {version};\nCOMMIT;"
            ))
            .unwrap();
        }
    }
}

/// Payloads whose keys `event_data_index` (migration 0003) wrote ambiguously or wrongly.
fn awkward_payloads() -> Vec<serde_json::Value> {
    vec![
        json!({"имя": "Анна"}),
        json!({"a.b": {"c": 1}}),
        json!({"a": {"b": {"c": 2}}}),
        json!({"a.b": 5, "a": {"b": 5}}),
        json!({"we\"ird": {"x": 1}, "plain": 1}),
        json!({"back\\slash": "v", "nl\nkey": 1, "tab\tkey": true, "c\u{1}x": null}),
        json!({"": {"": 0}, "e": ""}),
        json!({"a[1]": 3, "arr": [{"a.b": 1}]}),
        json!({"a b": "space", "x'y": 1, "😀": 1.5, "\u{7f}": "del"}),
        json!({"deep": {"k.1": {"k\"2": {"k3": "ü".repeat(140)}}}}),
    ]
}

/// The columns of `events` before migration 0011.
const OLD_EVENT_COLUMNS: &str = "tenant, seq, id, event_type, user_identity, action, entity, \
    entity_id, property, source, ip, outcome, occurred_at, recorded_at, recorded_by, event_data, \
    event_data_hash, redacted_at, idempotency_key, amends, amends_hash, request_hash, leaf_hash, \
    prev_hash, hash";

/// Migrations 0003 and 0004 carry the events of an existing database into `event_data_index`:
/// 0003 indexes them, and 0004 rewrites the rows of keys that 0003's encoding got wrong and
/// drops those a redaction left. After both, the rows are exactly the ones the appender writes.
#[tokio::test]
async fn the_event_data_index_is_carried_forward_by_migrations_0003_and_0004() {
    // The events, appended and indexed by today's code in a database of their own.
    let source = TestDb::new(Backend::Sqlite).await;
    let store = source.sqlite().await;
    store.migrate().await.unwrap();
    let ordinary = (0..1200).map(|i| {
        json!({"n": i, "group": i % 7, "plan": {"tier": format!("t{}", i % 3)},
               "ok": i % 2 == 0, "tags": [i], "gone": null,
               "f": i as f64 + 0.5, "big": 9_007_199_254_740_991_i64, "e": 1e3, "neg": -0.0,
               "long": "é".repeat(127 + i % 3), "k-ey": {"x_y": "ü"}})
    });
    let secret = json!({"we\"ird": "secret", "a.b": {"c": "secret"}, "n": "secret"});
    let events: Vec<serde_json::Value> = ordinary
        .chain(awkward_payloads())
        .chain([secret])
        .map(|data| json!({"event_type": "t", "user_identity": "u", "event_data": data}))
        .collect();
    let appended = store
        .append(&[submission("default", json!(events.clone()))])
        .await
        .unwrap();
    let secret = created(&appended[0]).last().unwrap().clone();
    store.append(&[redaction(&secret)]).await.unwrap();
    store.flush_postings().await.unwrap();
    let expected = index_rows(&source);
    assert!(
        expected.iter().all(|row| row.3 != secret.seq.0),
        "the redaction deleted the rows of the payload it erased"
    );
    let ordinary_rows: Vec<_> = expected
        .iter()
        .filter(|row| row.3 <= 1200)
        .cloned()
        .collect();
    assert_eq!(
        ordinary_rows.len(),
        1200 * 11,
        "eleven scalar leaves outside arrays"
    );

    // The same events in a database at migration 0002, as stored before the index existed.
    let target = TestDb::new(Backend::Sqlite).await;
    migrate_sqlite_to(&target, 2);
    let source_file = source.url.trim_start_matches("sqlite://");
    target
        .execute(&format!(
            "ATTACH DATABASE '{source_file}' AS source; \
             INSERT INTO events SELECT {OLD_EVENT_COLUMNS} FROM source.events; \
             INSERT INTO chain_heads SELECT tenant, seq, hash, x'' FROM source.chain_heads;"
        ))
        .await
        .unwrap();
    // The tree as it was stored then.
    let leaves: Vec<_> = store
        .scan(&TenantId::default(), Seq(0), 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.leaf_hash)
        .collect();
    let (tree, _) = crate::helpers::pre_tiles_tree_sql(Backend::Sqlite, "default", &leaves);
    target.execute(&tree).await.unwrap();

    // 0003 indexes them; its rows of ordinary payloads are already what the appender writes.
    migrate_sqlite_to(&target, 3);
    let after_0003 = index_rows(&target);
    let ordinary_after_0003: Vec<_> = after_0003
        .iter()
        .filter(|row| row.3 <= 1200)
        .cloned()
        .collect();
    assert_eq!(ordinary_after_0003, ordinary_rows);
    assert_ne!(after_0003, expected, "0003 got the awkward keys wrong");
    // What an appender before 0004 wrote for a key holding `"` (keys joined as they are) and
    // left behind when the event was redacted: 0003's trigger derived another path.
    target
        .execute(&format!(
            "INSERT INTO event_data_index VALUES ('default', 'we\"ird', 'secret', {})",
            secret.seq.0
        ))
        .await
        .unwrap();

    let store = target.sqlite().await;
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        crate::helpers::migrations_after(Backend::Sqlite, 3)
    );
    store.migrate().await.unwrap();
    assert_eq!(index_rows(&target), expected);

    // Queries find each awkward key's event through the rewritten rows, and only that event.
    let seq_of = |data: serde_json::Value| {
        let position = events.iter().position(|e| e["event_data"] == data);
        Seq(position.unwrap() as i64 + 1)
    };
    for (name, value, data) in [
        ("\"a.b\".c", "1", json!({"a.b": {"c": 1}})),
        ("a.b.c", "2", json!({"a": {"b": {"c": 2}}})),
        ("\"a.b\"", "5", json!({"a.b": 5, "a": {"b": 5}})),
        ("a.b", "5", json!({"a.b": 5, "a": {"b": 5}})),
        (
            "\"we\\\"ird\".x",
            "1",
            json!({"we\"ird": {"x": 1}, "plain": 1}),
        ),
        ("\"back\\\\slash\"", "v", awkward_payloads()[5].clone()),
        ("имя", "Анна", json!({"имя": "Анна"})),
        ("\"\".\"\"", "0", json!({"": {"": 0}, "e": ""})),
        ("\"a[1]\"", "3", json!({"a[1]": 3, "arr": [{"a.b": 1}]})),
    ] {
        let query = EventQuery::parse(&[(format!("event_data.{name}"), value.to_owned())]).unwrap();
        let found = store.query(&TenantId::default(), &query).await.unwrap();
        let seqs: Vec<Seq> = found.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![seq_of(data)], "{name}={value}");
    }
}

/// The indexes the partitions of `events` have for the partitioned index `index`; fails when
/// there is no such index.
async fn partition_indexes(db: &TestDb, index: &str) -> Vec<String> {
    let names = db
        .fetch_strings(&format!(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass('{index}')"
        ))
        .await
        .unwrap();
    assert!(!names.is_empty(), "no index {index} on the partitions");
    names
}

fn one(event_type: &str) -> Submission {
    submission(
        "default",
        json!([{"event_type": event_type, "user_identity": "u"}]),
    )
}

/// Appends one event with `clock` standing for the clock; returns its `recorded_at`.
async fn recorded_at_when_the_clock_says<S: Store>(
    store: &S,
    clock: OffsetDateTime,
) -> OffsetDateTime {
    let outcome = store.append_at(&[one("x")], clock).await.unwrap();
    created(&outcome[0])[0].recorded_at
}

/// A second store on the same database: a restarted server, or another instance.
async fn recorded_at_on_another_store(db: &TestDb, clock: OffsetDateTime) -> OffsetDateTime {
    match db.backend {
        Backend::Sqlite => recorded_at_when_the_clock_says(&db.sqlite().await, clock).await,
        Backend::Postgres => recorded_at_when_the_clock_says(&db.postgres().await, clock).await,
    }
}

/// A clock stepped back (here: two hours, after a restart) does not make `recorded_at` run
/// backwards: the events get the previous one's until the clock catches up.
async fn recorded_at_never_goes_backwards<S: Store>(store: S, db: &TestDb) {
    store.migrate().await.unwrap();
    let now = truncate_to_micros(OffsetDateTime::now_utc());
    let hour = time::Duration::hours(1);
    assert_eq!(recorded_at_when_the_clock_says(&store, now).await, now);
    assert_eq!(recorded_at_on_another_store(db, now - 2 * hour).await, now);
    assert_eq!(
        recorded_at_when_the_clock_says(&store, now - hour).await,
        now
    );
    let later = now + time::Duration::SECOND;
    assert_eq!(recorded_at_when_the_clock_says(&store, later).await, later);
    let head = store.head(&TenantId::default()).await.unwrap().unwrap();
    assert_eq!(head.recorded_at, Some(later));

    // A batch has one commit time, held back for every tenant in it.
    let batch = [
        submission(
            "default",
            json!([{"event_type": "y", "user_identity": "u"}]),
        ),
        submission("fresh", json!([{"event_type": "y", "user_identity": "u"}])),
    ];
    let outcomes = store.append_at(&batch, now).await.unwrap();
    assert_eq!(created(&outcomes[0])[0].recorded_at, later);
    assert_eq!(created(&outcomes[1])[0].recorded_at, later);

    let events = store.scan(&TenantId::default(), Seq(0), 100).await.unwrap();
    let times: Vec<OffsetDateTime> = events.iter().map(|e| e.recorded_at).collect();
    assert_eq!(times, [now, now, now, later, later]);
    crate::helpers::assert_gapless_chain(&events);
}

/// Back to the schema before the migration that keeps `recorded_at` in order (0004 on
/// PostgreSQL, 0005 on SQLite), with the log as it is; returns the migrations then pending. On
/// SQLite, whose migrations are one version number, the later users-generation migration (0006)
/// and tiles migration (0007) are undone with it.
async fn unapply_the_head_time_migration(db: &TestDb) -> Vec<i64> {
    let (pending, unrecord) = match db.backend {
        Backend::Sqlite => {
            // 0011 will copy the events into a table without the version 2 columns.
            crate::helpers::rewrite_as_version_1(db, &Default::default()).await;
            let leaves: Vec<Digest> = db
                .sqlite_connection()
                .prepare("SELECT leaf_hash FROM events WHERE tenant = 'default' ORDER BY seq")
                .unwrap()
                .query_map([], |row| row.get::<_, Vec<u8>>(0))
                .unwrap()
                .map(|bytes| Digest::from_slice(&bytes.unwrap()).unwrap())
                .collect();
            let (tree, _) = crate::helpers::pre_tiles_tree_sql(Backend::Sqlite, "default", &leaves);
            (
                crate::helpers::migrations_after(Backend::Sqlite, 4),
                format!(
                    "{} {tree} \
                     DROP TRIGGER users_generation_on_insert; \
                     DROP TRIGGER users_generation_on_update; \
                     DROP TRIGGER users_generation_on_delete; DROP TABLE users_generation; \
                     PRAGMA user_version = 4",
                    crate::helpers::pre_tiles_schema_sql(Backend::Sqlite)
                ),
            )
        }
        Backend::Postgres => (
            vec![4],
            "DELETE FROM _sqlx_migrations WHERE version = 4".to_owned(),
        ),
    };
    db.execute(&format!(
        "ALTER TABLE chain_heads DROP COLUMN recorded_at; \
         ALTER TABLE chain_heads DROP COLUMN recorded_at_ordered_from; \
         {unrecord}"
    ))
    .await
    .unwrap();
    pending
}

/// The problems `auditor verify` finds in the database, if any.
async fn verify_problems<S: Store>(store: &S) -> Vec<String> {
    auditor::integrity::verify::verify_store(store, &[], &[], |_, _| {})
        .await
        .unwrap()
        .into_iter()
        .filter_map(|result| result.err().map(|problem| problem.to_string()))
        .collect()
}

/// A log from before `recorded_at` was kept in order may step back in time at events nobody
/// touched (a clock stepped back, instances whose clocks disagreed): after the migration,
/// `verify` judges the order from the next event on, and still catches a step back there.
async fn recorded_at_order_is_judged_from_the_migration_on<S: Store>(store: S, db: &TestDb) {
    store.migrate().await.unwrap();
    let now = truncate_to_micros(OffsetDateTime::now_utc());
    let hour = time::Duration::hours(1);
    recorded_at_when_the_clock_says(&store, now).await;
    // As an instance before the migration would append: no head time holds its clock back.
    db.execute("UPDATE chain_heads SET recorded_at = NULL")
        .await
        .unwrap();
    assert_eq!(
        recorded_at_on_another_store(db, now - hour).await,
        now - hour
    );
    assert_eq!(
        verify_problems(&store).await.len(),
        1,
        "a new log is judged from seq 1"
    );

    unapply_the_head_time_migration(db).await;
    store.migrate().await.unwrap();
    let head = store.head(&TenantId::default()).await.unwrap().unwrap();
    assert_eq!(head.recorded_at_ordered_from, Seq(3));
    assert_eq!(verify_problems(&store).await, Vec::<String>::new());
    assert_eq!(
        recorded_at_on_another_store(db, now - 2 * hour).await,
        now - hour,
        "held back from the first event after the migration"
    );
    assert_eq!(verify_problems(&store).await, Vec::<String>::new());

    db.execute("UPDATE chain_heads SET recorded_at = NULL")
        .await
        .unwrap();
    recorded_at_on_another_store(db, now - 3 * hour).await;
    let problems = verify_problems(&store).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("seq 4: recorded_at goes backwards"),
        "{problems:?}"
    );
}

/// Migration 0004 (PostgreSQL; 0005 on SQLite) gives existing chain heads their last event's `recorded_at`, so a clock
/// stepped back right after the upgrade is held back too.
async fn the_chain_head_recorded_at_migration_backfills_existing_logs<S: Store>(
    store: S,
    db: &TestDb,
) {
    store.migrate().await.unwrap();
    let now = truncate_to_micros(OffsetDateTime::now_utc());
    recorded_at_when_the_clock_says(&store, now - time::Duration::MINUTE).await;
    recorded_at_when_the_clock_says(&store, now).await;
    let pending = unapply_the_head_time_migration(db).await;
    assert_eq!(store.pending_migrations().await.unwrap(), pending);
    store.migrate().await.unwrap();
    let head = store.head(&TenantId::default()).await.unwrap().unwrap();
    assert_eq!(head.recorded_at, Some(now));
    let behind = now - time::Duration::hours(2);
    assert_eq!(recorded_at_on_another_store(db, behind).await, now);
}

/// Every page of a query, following the cursor to the end: the `seq`s it returned, in order.
async fn all_pages<S: Store>(store: &S, mut query: EventQuery) -> Vec<i64> {
    let mut seqs = Vec::new();
    loop {
        let mut page = store.query(&TenantId::default(), &query).await.unwrap();
        let more = page.len() > query.limit as usize;
        page.truncate(query.limit as usize);
        seqs.extend(page.iter().map(|event| event.seq.0));
        match page.last() {
            Some(last) if more => query.after = Some(last.seq),
            _ => return seqs,
        }
    }
}

/// Values as frequent as every other event, as rare as a handful, and a frequent value that
/// the first thousand events do not hold: each query pages to exactly its matches in both
/// orders, however the backend reaches them (on PostgreSQL, the three steps of a query that
/// only the filter index serves).
async fn frequent_and_rare_values_page_to_exactly_their_matches<S: Store>(store: S, _db: &TestDb) {
    store.migrate().await.unwrap();
    const EVENTS: usize = 5200;
    // Around every 1024th event from either end, where a backend may split its reading.
    let is_edge = |i: usize| {
        let from_end = EVENTS - i;
        matches!((i + 1) % 1024, 0..=2 | 1022 | 1023)
            || matches!(from_end % 1024, 0..=2 | 1022 | 1023)
    };
    let event = |i: usize| {
        let mut event = json!({
            "event_type": if i % 300 == 7 { "rare" } else { "common" },
            "user_identity": format!("u{}", i % 7),
            "source": if i.is_multiple_of(2) { "even" } else { "odd" },
            "event_data": {"v": i % 1000, "third": i.is_multiple_of(3)},
        });
        if i >= 1100 && i.is_multiple_of(2) {
            event["property"] = json!("late");
        }
        if is_edge(i) {
            event["entity_id"] = json!("edge");
        }
        event
    };
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<_> = chunk.iter().map(|&i| event(i)).collect();
        store
            .append(&[submission("default", json!(batch))])
            .await
            .unwrap();
    }
    // Event i has seq i + 1.
    let matching = |test: &dyn Fn(usize) -> bool| -> Vec<i64> {
        (0..EVENTS)
            .filter(|&i| test(i))
            .map(|i| i as i64 + 1)
            .collect()
    };
    let cases: Vec<(&str, &str, Vec<i64>)> = vec![
        ("source", "even", matching(&|i| i.is_multiple_of(2))),
        ("event_type", "rare", matching(&|i| i % 300 == 7)),
        ("event_data.v", "123", matching(&|i| i % 1000 == 123)),
        (
            "property",
            "late",
            matching(&|i| i >= 1100 && i.is_multiple_of(2)),
        ),
        (
            "event_data.third",
            "true",
            matching(&|i| i.is_multiple_of(3)),
        ),
        ("event_data.v", "4000", Vec::new()),
        ("entity_id", "edge", matching(&is_edge)),
    ];
    for (field, value, expected) in cases {
        for (order, limit) in [
            ("asc", "100"),
            ("desc", "100"),
            ("asc", "7"),
            ("desc", "1000"),
        ] {
            let query = EventQuery::parse(&[
                (field.to_owned(), value.to_owned()),
                ("order".to_owned(), order.to_owned()),
                ("limit".to_owned(), limit.to_owned()),
            ])
            .unwrap();
            let mut wanted = expected.clone();
            if order == "desc" {
                wanted.reverse();
            }
            assert_eq!(
                all_pages(&store, query).await,
                wanted,
                "{field}={value}, {order}, pages of {limit}"
            );
        }
    }
    // Two filters, and a page that starts from a cursor in the middle of the log.
    let mut query = EventQuery::parse(&[
        ("source".to_owned(), "even".to_owned()),
        ("event_data.v".to_owned(), "124".to_owned()),
    ])
    .unwrap();
    query.after = Some(Seq(2000));
    let expected: Vec<i64> = matching(&|i| i % 1000 == 124)
        .into_iter()
        .filter(|&seq| seq > 2000)
        .collect();
    assert_eq!(expected.len(), 4);
    assert_eq!(all_pages(&store, query).await, expected);
}

/// A long page (which a backend may decode in parts, on several threads) holds every event
/// whole and in `seq` order: the same events as short pages read one by one.
async fn a_long_page_is_the_short_pages_in_order<S: Store>(store: S, _db: &TestDb) {
    store.migrate().await.unwrap();
    const EVENTS: usize = 2501;
    let events: Vec<serde_json::Value> = (0..EVENTS)
        .map(|i| json!({"event_type": "t", "user_identity": format!("u{i}"), "event_data": {"i": i}}))
        .collect();
    append_in_thousands(&store, &events).await;
    let tenant = TenantId::default();
    let long = store.scan(&tenant, Seq(0), 3000).await.unwrap();
    let mut short = Vec::new();
    let mut after = Seq(0);
    loop {
        let page = store.scan(&tenant, after, 100).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        short.extend(page);
    }
    assert_eq!(long.len(), EVENTS);
    for (i, event) in long.iter().enumerate() {
        assert_eq!(event.seq, Seq(i as i64 + 1));
        assert_eq!(
            event.user_identity.as_deref(),
            Some(format!("u{i}").as_str())
        );
    }
    assert_eq!(long, short);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = crate::helpers::TestDb::new(crate::helpers::Backend::Sqlite).await;
                    super::$name(db.sqlite().await, &db).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = crate::helpers::TestDb::new(crate::helpers::Backend::Postgres).await;
                    super::$name(db.postgres().await, &db).await
                }
            )*
        }
    };
}

conformance!(
    migrations_are_reported_then_applied,
    appends_chain_each_tenant_separately,
    idempotency_keys_replay_or_conflict,
    the_schema_refuses_updates_and_deletes,
    a_redaction_may_change_no_other_column,
    users_are_added_found_listed_and_removed,
    sessions_are_added_found_touched_and_removed,
    the_users_watch_sees_every_change_to_users,
    the_last_admin_cannot_be_removed,
    every_documented_filter_is_planned_through_an_index,
    event_data_paths_match_exactly_the_events_holding_the_value,
    recorded_at_never_goes_backwards,
    the_chain_head_recorded_at_migration_backfills_existing_logs,
    recorded_at_order_is_judged_from_the_migration_on,
    frequent_and_rare_values_page_to_exactly_their_matches,
    a_long_page_is_the_short_pages_in_order,
);

/// Appends `count` small events to the default tenant in batches of 1000.
async fn append_many(store: &SqliteStore, count: usize) {
    let events: Vec<serde_json::Value> = (0..count)
        .map(|i| json!({"event_type": "t", "user_identity": format!("u{}", i % 50)}))
        .collect();
    append_in_thousands(store, &events).await;
}

/// Appends `events` to the default tenant in batches of 1000.
async fn append_in_thousands<S: Store>(store: &S, events: &[serde_json::Value]) {
    for chunk in events.chunks(1000) {
        store
            .append(&[submission("default", json!(chunk))])
            .await
            .unwrap();
    }
}

/// SQLite's WAL is copied into the database file by the store's background connection, not left
/// to the writer's commits (whose autocheckpoint is only a far-off safety net).
#[tokio::test]
async fn the_sqlite_wal_is_checkpointed_in_the_background() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.sqlite().await;
    store.migrate().await.unwrap();
    let file = db.url.trim_start_matches("sqlite://").to_owned();
    let size = || std::fs::metadata(&file).unwrap().len();
    let before = size();
    append_many(&store, 3000).await;
    let mut grew = false;
    for _ in 0..50 {
        if size() > before + 512 * 1024 {
            grew = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        grew,
        "the database file still holds {} bytes: nothing was checkpointed",
        size()
    );
}

/// The planner's statistics appear without anyone running ANALYZE (every 30 s).
#[tokio::test]
async fn sqlite_planner_statistics_are_kept_by_the_store() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.sqlite().await;
    store.migrate().await.unwrap();
    append_many(&store, 3000).await;
    let conn = db.sqlite_connection();
    let mut analysed = false;
    for _ in 0..45 {
        let rows: Result<i64, _> = conn.query_row(
            "SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'events'",
            [],
            |row| row.get(0),
        );
        if matches!(rows, Ok(n) if n > 0) {
            analysed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    assert!(analysed, "no statistics for events after 45 s");
}
