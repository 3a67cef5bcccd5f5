//! Databases written by earlier versions of the service are carried forward, never recreated.
//!
//! `fixtures/sqlx-era.db` was written by the SQLite backend on sqlx (see `fixtures/README.md`):
//! sqlx's migrator recorded migrations 1–5 in `_sqlx_migrations`, and the server recorded five
//! events (one of them a redaction) and a checkpoint; `sqlx-era.events.json` is what it answered
//! for `GET /events` then.

use auditor::integrity::Digest;
use auditor::integrity::checkpoint::NoteVerifier;
use auditor::model::{Event, EventQuery, Limits, NewEvent, RawEvent, Seq, Submission, TenantId};
use auditor::store::{Appended, SqliteStore, Store};
use serde_json::json;

use crate::helpers::{Backend, TestDb, assert_gapless_chain, migrations_after};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/api/fixtures")
        .join(name)
}

/// A test database holding a copy of the fixture, and the events it holds.
async fn sqlx_era_database() -> (TestDb, Vec<Event>) {
    let db = TestDb::new(Backend::Sqlite).await;
    std::fs::copy(fixture("sqlx-era.db"), db.sqlite_path()).unwrap();
    let events =
        serde_json::from_str(&std::fs::read_to_string(fixture("sqlx-era.events.json")).unwrap())
            .unwrap();
    (db, events)
}

fn user_version(db: &TestDb) -> i64 {
    db.sqlite_connection()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap()
}

fn has_sqlx_table(db: &TestDb) -> bool {
    db.sqlite_connection()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = '_sqlx_migrations'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .unwrap()
        == 1
}

/// The verifier key of the signing key that signed the fixture's checkpoints.
const FIXTURE_VERIFIER: &str =
    "auditor.local/log/default+ef4f1350+AXG4idAobZyU35QrAazPoU6hfvjlATj5asjbSZ/h6G6W";

async fn problems(store: &SqliteStore) -> Vec<String> {
    let keys = [NoteVerifier::parse(FIXTURE_VERIFIER).unwrap()];
    auditor::integrity::verify::verify_store(store, &keys, &[], |_, _| {})
        .await
        .unwrap()
        .into_iter()
        .filter_map(|result| result.err().map(|problem| problem.to_string()))
        .collect()
}

fn submission(event: serde_json::Value) -> Submission {
    let raw: RawEvent = serde_json::from_value(event).unwrap();
    Submission::new(
        TenantId::default(),
        "tester",
        vec![NewEvent::parse(raw, &Limits::default()).unwrap()],
    )
}

fn one(event_type: &str) -> Submission {
    submission(
        json!({"event_type": event_type, "user_identity": "u", "event_data": {"plan": {"tier": "gold"}}}),
    )
}

/// Events as the API shows them: without `request_hash`, which it never sends.
fn as_answered(mut events: Vec<Event>) -> Vec<Event> {
    for event in &mut events {
        event.request_hash = Digest::ZERO;
    }
    events
}

/// The first event of the fixture as its client sent it, with its idempotency key.
/// The fixture's first request again, by its caller (`admin`; the caller is part of what a
/// retry must repeat).
fn first_event_again(event_type: &str) -> Submission {
    Submission {
        recorded_by: "admin".into(),
        ..submission(json!({
            "event_type": event_type, "user_identity": "alice", "action": "read",
            "entity": "session", "entity_id": "s-1", "outcome": "success", "ip": "192.0.2.1",
            "source": "web", "idempotency_key": "k-1",
            "event_data": {"plan": {"tier": "gold"}, "n": 7, "ok": true, "none": null, "f": 1.5}
        }))
    }
}

/// sqlx's record of migrations 1–5 counts as applied, so only the later ones are pending; the
/// next `migrate` moves the record into `user_version`, drops `_sqlx_migrations` and applies
/// them, and the log
/// goes on where it was: same events, same chain, same index rows, same users and checkpoints.
#[tokio::test]
async fn a_database_migrated_by_sqlx_is_carried_forward() {
    let (db, expected) = sqlx_era_database().await;
    let tenant = TenantId::default();
    let store = db.sqlite().await;
    // Migrations after the sqlx era (0006, the users generation, and later) are pending,
    // nothing else.
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        migrations_after(Backend::Sqlite, 5)
    );
    let scan = |store: &SqliteStore| {
        let store = store.clone();
        async move { as_answered(store.scan(&TenantId::default(), Seq(0), 100).await.unwrap()) }
    };
    // Read only once migrated: the service reads the schema it migrates to (`serve` refuses to
    // start with migrations pending), and 0011 added columns.
    store.migrate().await.unwrap();
    assert_eq!(
        Some(&user_version(&db)),
        migrations_after(Backend::Sqlite, 0).last()
    );
    assert!(
        !has_sqlx_table(&db),
        "sqlx's record was moved, not kept beside"
    );
    assert_eq!(store.pending_migrations().await.unwrap(), Vec::<i64>::new());
    store.migrate().await.unwrap();
    assert_eq!(scan(&store).await, expected);
    assert!(store.find_user("admin").await.unwrap().is_some());
    let signed = store.checkpoint(&tenant, Some(5)).await.unwrap().unwrap();
    // 0007 moved the tree into tiles: it serves the root the fixture's checkpoint signed.
    let served = auditor::integrity::proofs::consistency(&store, &tenant, 1, 5)
        .await
        .unwrap();
    assert_eq!(served.to_root, signed.root);

    // The stored fingerprint (`request_hash`) reads back: a retry of the first request is
    // answered with the event recorded then, a different request under its key is refused.
    let retried = store
        .append(&[first_event_again("user.login")])
        .await
        .unwrap();
    assert_eq!(
        retried,
        vec![Appended::Replayed(vec![
            store.scan(&tenant, Seq(0), 1).await.unwrap().remove(0)
        ])]
    );
    let reused = store
        .append(&[first_event_again("user.logout")])
        .await
        .unwrap();
    assert_eq!(reused, vec![Appended::KeyConflict("k-1".into())]);

    // The event_data_index rows the old appender wrote are found by queries, the redacted
    // payload's are gone, and new rows join them.
    store.append(&[one("after.upgrade")]).await.unwrap();
    let seqs = |events: Vec<Event>| events.iter().map(|e| e.seq.0).collect::<Vec<_>>();
    for (name, value, found) in [
        ("event_data.plan.tier", "gold", vec![1, 6]),
        ("event_data.\"a.b\".c", "1", vec![2]),
        ("event_data.имя", "Анна", vec![2]),
        ("event_data.ssn", "123-45-6789", vec![]),
    ] {
        let query = EventQuery::parse(&[(name.to_owned(), value.to_owned())]).unwrap();
        assert_eq!(
            seqs(store.query(&tenant, &query).await.unwrap()),
            found,
            "{name}={value}"
        );
    }
    let events = store.scan(&tenant, Seq(0), 100).await.unwrap();
    assert_eq!(as_answered(events[..5].to_vec()), expected);
    assert_gapless_chain(&events);
    assert_eq!(problems(&store).await, Vec::<String>::new());

    // Erasing a data subject across old and new events: a version 1 event loses its payload
    // (its leaf holds the other fields themselves), a version 2 event every personal field;
    // the log still verifies.
    store
        .append(&[submission(
            json!({"event_type": "n", "user_identity": "erin"}),
        )])
        .await
        .unwrap();
    let first = &events[0];
    assert_eq!(first.leaf_version, 1);
    let subject = first.user_identity.clone().unwrap();
    store
        .append(&[submission(
            json!({"event_type": "n2", "user_identity": subject}),
        )])
        .await
        .unwrap();
    let mut record = NewEvent::parse_own(
        serde_json::from_value(
            json!({"event_type": "audit.erased", "user_identity": "admin",
                                      "event_data": {"reason": "r"}}),
        )
        .unwrap(),
        &Limits::default(),
    )
    .unwrap();
    record.erases = Some(auditor::model::Erasure {
        targets: auditor::model::ErasureTargets::Subject(
            auditor::model::Personal::UserIdentity,
            subject.clone(),
        ),
        fields: auditor::model::Personal::ALL.to_vec(),
        reason: "r".into(),
    });
    let outcome = store
        .append(&[Submission::new(tenant.clone(), "admin", vec![record])])
        .await
        .unwrap();
    let Appended::Created {
        events: recorded, ..
    } = &outcome[0]
    else {
        panic!("{outcome:?}")
    };
    let new_seq = events.len() as i64 + 2;
    assert_eq!(
        recorded[0].event_data.as_ref().unwrap()["erased"],
        json!([[1, 1], [new_seq, new_seq]])
    );
    let after = store.scan(&tenant, Seq(0), 100).await.unwrap();
    assert_eq!(after[0].user_identity.as_deref(), Some(subject.as_str()));
    assert_eq!(after[0].event_data, None);
    assert_eq!(after[new_seq as usize - 1].user_identity, None);
    assert_eq!(problems(&store).await, Vec::<String>::new());
}

/// A database sqlx's migrator left at an earlier migration continues from there: the pending
/// ones are those after sqlx's last, and they run on the data as it is.
#[tokio::test]
async fn a_database_sqlx_migrated_partway_continues_from_there() {
    let (db, expected) = sqlx_era_database().await;
    db.execute(
        "ALTER TABLE chain_heads DROP COLUMN recorded_at; \
         ALTER TABLE chain_heads DROP COLUMN recorded_at_ordered_from; \
         DELETE FROM _sqlx_migrations WHERE version = 5",
    )
    .await
    .unwrap();
    let store = db.sqlite().await;
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        migrations_after(Backend::Sqlite, 4)
    );
    store.migrate().await.unwrap();
    assert_eq!(
        Some(&user_version(&db)),
        migrations_after(Backend::Sqlite, 0).last()
    );
    assert!(!has_sqlx_table(&db));
    let head = store.head(&TenantId::default()).await.unwrap().unwrap();
    assert_eq!(head.seq, Seq(5));
    assert_eq!(
        head.recorded_at,
        Some(expected[4].recorded_at),
        "backfilled"
    );
    assert_eq!(head.recorded_at_ordered_from, Seq(6));
}

/// A record that does not match this binary's migrations (another build's migration under the
/// same number, or one that failed partway) is refused, and left as it is, rather than guessed at.
#[tokio::test]
async fn a_sqlx_record_that_does_not_match_is_refused_and_left_alone() {
    for tampering in [
        "UPDATE _sqlx_migrations SET checksum = zeroblob(48) WHERE version = 4",
        "UPDATE _sqlx_migrations SET success = 0 WHERE version = 5",
        "UPDATE _sqlx_migrations SET version = 7 WHERE version = 5",
    ] {
        let (db, _) = sqlx_era_database().await;
        db.execute(tampering).await.unwrap();
        let store = db.sqlite().await;
        assert!(store.pending_migrations().await.is_err(), "{tampering}");
        assert!(store.migrate().await.is_err(), "{tampering}");
        assert!(has_sqlx_table(&db), "{tampering}");
        assert_eq!(user_version(&db), 0, "{tampering}");
    }
}
