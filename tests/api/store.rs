//! The storage conformance suite: one set of tests, run against every `Store` implementation.

use auditor::auth::{NewUser, Role};
use auditor::integrity::{Digest, chain_hash, leaf_hash};
use auditor::model::{EventQuery, Limits, NewEvent, RawEvent, Seq, Submission, TenantId};
use auditor::store::{Appended, Store, StoreError};
use serde_json::json;

use crate::helpers::{Backend, TestDb};

fn submission(tenant: &str, events: serde_json::Value) -> Submission {
    let raws: Vec<RawEvent> = serde_json::from_value(events).unwrap();
    Submission {
        tenant: TenantId::new(tenant),
        recorded_by: "tester".into(),
        events: raws
            .into_iter()
            .map(|raw| NewEvent::parse(raw, &Limits::default()).unwrap())
            .collect(),
    }
}

fn created(outcome: &Appended) -> &[auditor::model::Event] {
    match outcome {
        Appended::Created { events, .. } => events,
        other => panic!("expected Created, got {other:?}"),
    }
}

async fn migrations_are_reported_then_applied<S: Store>(store: S, db: &TestDb) {
    let all = match db.backend {
        Backend::Sqlite => vec![1, 2],
        Backend::Postgres => vec![1, 2, 3],
    };
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
            assert_eq!(event.hash, chain_hash(&prev, &leaf_hash(event)));
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

async fn users_are_added_found_listed_and_removed<S: Store>(store: S, _db: &TestDb) {
    store.migrate().await.unwrap();
    let user = NewUser {
        name: "ops".into(),
        password_hash: "$argon2id$fake".into(),
        role: Role::Reader,
    };
    store.add_user(&user).await.unwrap();
    assert!(matches!(
        store.add_user(&user).await,
        Err(StoreError::Conflict(_))
    ));
    let found = store.find_user("ops").await.unwrap().unwrap();
    assert_eq!((found.name.as_str(), found.role), ("ops", Role::Reader));
    assert!(store.find_user("nobody").await.unwrap().is_none());
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    assert_eq!(store.count_users_with_role(Role::Reader).await.unwrap(), 1);
    assert_eq!(store.count_users_with_role(Role::Admin).await.unwrap(), 0);
    store.remove_user("ops").await.unwrap();
    assert!(matches!(
        store.remove_user("ops").await,
        Err(StoreError::NotFound)
    ));
}

async fn the_last_admin_cannot_be_removed<S: Store>(store: S, _db: &TestDb) {
    store.migrate().await.unwrap();
    use auditor::auth::users;
    users::add(&store, "root", Role::Admin, "a-long-password-1".into())
        .await
        .unwrap();
    let error = users::remove(&store, "root").await.expect_err("last admin");
    assert!(error.to_string().contains("last admin"));
    users::add(&store, "root2", Role::Admin, "a-long-password-2".into())
        .await
        .unwrap();
    users::remove(&store, "root").await.unwrap();
    let weak = users::add(&store, "weak", Role::Reader, "short".into()).await;
    assert!(weak.is_err(), "short passwords are refused");
    let bad_name = users::add(&store, "a:b", Role::Reader, "a-long-password-3".into()).await;
    assert!(bad_name.is_err(), "`:` cannot appear in a Basic user name");
}

/// With statistics on a few thousand events, every documented filter is planned through an
/// index (named where the filter is selective enough for one specific index to be the right one).
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
                "event_data": {"n": i, "group": i % 7}
            })
        })
        .collect();
    let first = store
        .append(&[submission("default", json!(batch))])
        .await
        .unwrap();
    let some_id = created(&first[0])[5].id;
    db.execute("ANALYZE").await.unwrap();

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
    // PostgreSQL: the partitions that hold rows must be read through an index. The months
    // ahead are empty and analysed as such, so a Seq Scan of them is the right plan (it reads
    // nothing).
    let mut populated = Vec::new();
    if db.backend == Backend::Postgres {
        cases.push(("event_data.n=77".to_owned(), Some("events_event_data")));
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
                    || plan.contains("USING PRIMARY KEY"),
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
            // On PostgreSQL the plan names the partitions' indexes, which derive from `index`.
            let names = match db.backend {
                Backend::Sqlite => vec![index.to_owned()],
                Backend::Postgres => partition_indexes(db, index).await,
            };
            let used = names.iter().any(|name| plan.contains(&format!("{name} ")));
            assert!(
                used,
                "{query} should use the {index} index ({names:?}): {plan}"
            );
        }
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
    users_are_added_found_listed_and_removed,
    the_last_admin_cannot_be_removed,
    every_documented_filter_is_planned_through_an_index,
);
