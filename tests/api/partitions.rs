//! PostgreSQL only: `events` is partitioned by month of `recorded_at`. Events land in their
//! month, the months ahead exist, a missing month is added on demand, creators may race, the
//! partitions are append-only, and an old month can be dropped.

use std::path::Path;

use auditor::model::{Limits, NewEvent, RawEvent, Seq, Submission, TenantId};
use auditor::store::postgres::{PARTITION_MONTHS_AHEAD, partition_name};
use auditor::store::{Appended, PgStore, Store};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::Connection;
use time::macros::datetime;
use time::{Date, OffsetDateTime};

use crate::helpers::{
    Backend, TestDb, assert_gapless_chain, created, pre_tiles_tree_sql, spawn_app,
};

fn submission(events: serde_json::Value) -> Submission {
    let raws: Vec<RawEvent> = serde_json::from_value(events).unwrap();
    Submission::new(
        TenantId::default(),
        "tester",
        raws.into_iter()
            .map(|raw| NewEvent::parse(raw, &Limits::default()).unwrap())
            .collect(),
    )
}

fn one(event_type: &str) -> Submission {
    submission(json!([{"event_type": event_type, "user_identity": "u"}]))
}

/// The partitions of `events`, by name, in order.
async fn partitions(db: &TestDb) -> Vec<String> {
    db.fetch_strings(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'events'::regclass ORDER BY 1",
    )
    .await
    .unwrap()
}

/// The partition holding the event of this `seq` in the default tenant.
async fn partition_of(db: &TestDb, seq: Seq) -> String {
    let sql = format!(
        "SELECT tableoid::regclass::text FROM events WHERE tenant = 'default' AND seq = {}",
        seq.0
    );
    db.fetch_strings(&sql).await.unwrap().remove(0)
}

fn months_from(day: Date, count: u32) -> Vec<String> {
    let mut names = Vec::new();
    let mut month = day.replace_day(1).unwrap();
    for _ in 0..count {
        names.push(partition_name(month));
        month = month.replace_day(28).unwrap() + time::Duration::days(4);
        month = month.replace_day(1).unwrap();
    }
    names
}

async fn migrated() -> (TestDb, PgStore) {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.postgres().await;
    store.migrate().await.unwrap();
    (db, store)
}

#[tokio::test]
async fn the_current_and_next_months_have_partitions_once_the_server_runs() {
    let app = spawn_app(Backend::Postgres).await;
    let existing = partitions(&app.db).await;
    let today = OffsetDateTime::now_utc().date();
    for name in months_from(today, PARTITION_MONTHS_AHEAD + 1) {
        assert!(existing.contains(&name), "{name} missing from {existing:?}");
    }
    let event = app
        .record(json!({"event_type": "x", "user_identity": "u"}))
        .await;
    let seq = Seq(event["seq"].as_i64().unwrap());
    assert_eq!(partition_of(&app.db, seq).await, partition_name(today));
    // Each month's statistics follow its growth closely (see events_add_partition).
    let options = app
        .db
        .fetch_strings(&format!(
            "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = '{}'",
            partition_name(today)
        ))
        .await
        .unwrap();
    assert_eq!(options, ["autovacuum_analyze_scale_factor=0.01"]);
}

#[tokio::test]
async fn events_land_in_the_partition_of_their_recorded_at() {
    let (db, store) = migrated().await;
    let days = [
        datetime!(2030-01-31 23:59:59.999999 UTC),
        datetime!(2030-02-01 00:00:00 UTC),
        datetime!(2030-03-15 12:00:00 UTC),
    ];
    for (index, at) in days.iter().enumerate() {
        let outcome = store.append_at(&[one("x")], *at).await.unwrap();
        let event = &created(&outcome[0])[0];
        assert_eq!(event.recorded_at, *at);
        assert_eq!(event.seq, Seq(index as i64 + 1));
    }
    for (seq, expected) in [
        (1, "events_y2030m01"),
        (2, "events_y2030m02"),
        (3, "events_y2030m03"),
    ] {
        assert_eq!(partition_of(&db, Seq(seq)).await, expected);
    }
    let all = store.scan(&TenantId::default(), Seq(0), 100).await.unwrap();
    assert_gapless_chain(&all);
}

#[tokio::test]
async fn an_append_to_a_month_without_a_partition_creates_it_and_is_kept() {
    let (db, store) = migrated().await;
    // The current month too: its partition is empty, so an operator could drop it.
    let current = partition_name(OffsetDateTime::now_utc().date());
    db.execute(&format!("DROP TABLE {current}")).await.unwrap();
    let outcome = store.append(&[one("now")]).await.unwrap();
    assert_eq!(created(&outcome[0])[0].seq, Seq(1));
    assert_eq!(partition_of(&db, Seq(1)).await, current);

    // A month far beyond the ones kept ahead, with an idempotency key: the retried append
    // records the key exactly once.
    let keyed =
        submission(json!([{"event_type": "far", "user_identity": "u", "idempotency_key": "k"}]));
    let far = datetime!(2099-07-04 10:00:00 UTC);
    let outcome = store
        .append_at(std::slice::from_ref(&keyed), far)
        .await
        .unwrap();
    let event = created(&outcome[0])[0].clone();
    assert_eq!(event.seq, Seq(2));
    assert_eq!(partition_of(&db, Seq(2)).await, "events_y2099m07");
    let again = store.append(&[keyed]).await.unwrap();
    assert_eq!(again[0], Appended::Replayed(vec![event]));

    // What was added on demand is as protected as the rest.
    let error = db.execute("TRUNCATE events_y2099m07").await.unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    let all = store.scan(&TenantId::default(), Seq(0), 100).await.unwrap();
    assert_gapless_chain(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_adding_the_same_partitions_at_once_both_succeed() {
    let (db, first) = migrated().await;
    let second = db.postgres().await;
    let months: Vec<Date> = (1..=12)
        .map(|month| Date::from_calendar_date(2040, month.try_into().unwrap(), 1).unwrap())
        .collect();
    let race = |store: PgStore| {
        let months = months.clone();
        tokio::spawn(async move {
            let mut created = Vec::new();
            for month in months {
                created.push(store.add_partition(month).await.unwrap());
            }
            created
        })
    };
    let (a, b) = tokio::join!(race(first.clone()), race(second.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    for (index, (a, b)) in a.iter().zip(&b).enumerate() {
        assert!(a ^ b, "month {}: exactly one store creates it", index + 1);
    }
    // And the whole span ahead, from both, at once.
    let now = OffsetDateTime::now_utc();
    let (a, b) = tokio::join!(first.ensure_partitions(now), second.ensure_partitions(now));
    assert_eq!(
        (a.unwrap(), b.unwrap()),
        (0, 0),
        "migrate already added them"
    );
    let existing = partitions(&db).await;
    assert_eq!(
        existing
            .iter()
            .filter(|n| n.starts_with("events_y2040"))
            .count(),
        12
    );
}

#[tokio::test]
async fn a_partition_refuses_truncate_update_and_delete() {
    let (db, store) = migrated().await;
    store.append(&[one("x")]).await.unwrap();
    let current = partition_name(OffsetDateTime::now_utc().date());
    for sql in [
        format!("TRUNCATE {current}"),
        format!("DELETE FROM {current}"),
        format!("UPDATE {current} SET event_type = 'forged'"),
        "TRUNCATE events".to_owned(),
    ] {
        let error = db.execute(&sql).await.expect_err(&sql).to_string();
        assert!(error.contains("append-only"), "{sql}: {error}");
    }
    // Every partition carries the TRUNCATE trigger, including the empty months ahead.
    let unguarded = db
        .fetch_strings(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'events'::regclass AND NOT EXISTS (SELECT 1 FROM pg_trigger t \
             WHERE t.tgrelid = c.oid AND t.tgname = 'events_are_never_truncated')",
        )
        .await
        .unwrap();
    assert!(unguarded.is_empty(), "{unguarded:?}");
}

/// A month dropped by hand rather than by retention: the rest of the log stays readable and
/// appendable. Nothing records the drop, so `verify` reports the gap (as
/// `retention_drops_a_month_every_tenant_in_it_has_outlived` shows).
#[tokio::test]
async fn an_old_month_can_be_dropped_and_the_rest_stays_readable() {
    let (db, store) = migrated().await;
    store
        .append_at(
            &[one("old"), one("old")],
            datetime!(2030-01-10 00:00:00 UTC),
        )
        .await
        .unwrap();
    store
        .append_at(&[one("new")], datetime!(2030-02-10 00:00:00 UTC))
        .await
        .unwrap();
    db.execute("ALTER TABLE events DETACH PARTITION events_y2030m01; DROP TABLE events_y2030m01")
        .await
        .unwrap();
    let left = store.scan(&TenantId::default(), Seq(0), 100).await.unwrap();
    let seqs: Vec<i64> = left.iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, vec![3]);
    assert_eq!(left[0].event_type, "new");
    // Appends go on after the cut.
    let outcome = store.append(&[one("later")]).await.unwrap();
    assert_eq!(created(&outcome[0])[0].seq, Seq(4));
}

/// A database at migration 0002 with events from several months, and idempotency keys, becomes
/// partitioned without losing or changing an event.
#[tokio::test]
async fn migration_0003_moves_existing_events_into_month_partitions() {
    // The events, made by today's code in a database of their own...
    let (source, store) = migrated().await;
    let keyed = |key: &str| {
        submission(
            json!([{"event_type": "k", "user_identity": "u", "idempotency_key": key, "event_data": {"n": 1}}]),
        )
    };
    let mut fingerprints = std::collections::HashMap::new();
    for (at, key) in [
        (datetime!(2024-01-05 08:00:00 UTC), "a"),
        (datetime!(2024-02-29 23:59:59.5 UTC), "b"),
        (datetime!(2025-07-01 00:00:00 UTC), "c"),
    ] {
        let outcome = store.append_at(&[keyed(key), one("x")], at).await.unwrap();
        let seq = created(&outcome[0])[0].seq.0;
        fingerprints.insert(
            ("default".to_owned(), seq),
            keyed(key).events[0].fingerprint(),
        );
    }
    // ...with the leaves they had then.
    let before = crate::helpers::rewrite_as_version_1(&source, &fingerprints).await;

    // ...copied into a database that has only migrations 0001 and 0002.
    let target = TestDb::new(Backend::Postgres).await;
    let old = tempfile::tempdir().unwrap();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations/postgres");
    for file in ["0001_events_and_users.sql", "0002_filter_indexes.sql"] {
        std::fs::copy(migrations.join(file), old.path().join(file)).unwrap();
    }
    let mut to = sqlx::PgConnection::connect(&target.url).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&mut to)
        .await
        .unwrap();
    let mut from = sqlx::PgConnection::connect(&source.url).await.unwrap();
    let columns = "tenant, seq, id, event_type, user_identity, action, entity, entity_id, \
        property, source, ip, outcome, occurred_at, recorded_at, recorded_by, event_data, \
        event_data_hash, redacted_at, idempotency_key, amends, amends_hash, request_hash, \
        leaf_hash, prev_hash, hash";
    // The tree as it was stored then (`merkle_nodes`, the head's frontier) is written below.
    for (table, selected, columns) in [
        ("events", columns, columns),
        (
            "chain_heads",
            "tenant, seq, hash, ''::bytea",
            "tenant, seq, hash, frontier",
        ),
    ] {
        let rows: Vec<u8> = from
            .copy_out_raw(&format!("COPY (SELECT {selected} FROM {table}) TO STDOUT"))
            .await
            .unwrap()
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .unwrap();
        let mut copy = to
            .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await
            .unwrap();
        copy.send(rows).await.unwrap();
        copy.finish().await.unwrap();
    }
    let leaves: Vec<_> = before.iter().map(|e| e.leaf_hash).collect();
    let (tree, _) = pre_tiles_tree_sql(Backend::Postgres, "default", &leaves);
    target.execute(&tree).await.unwrap();

    let migrated = target.postgres().await;
    assert_eq!(
        migrated.pending_migrations().await.unwrap(),
        crate::helpers::migrations_after(Backend::Postgres, 2)
    );
    migrated.migrate().await.unwrap();
    let after = migrated
        .scan(&TenantId::default(), Seq(0), 100)
        .await
        .unwrap();
    assert_eq!(after, before);
    assert_gapless_chain(&after);
    // Migration 0004 gave the head its last event's recorded_at.
    let head = migrated.head(&TenantId::default()).await.unwrap().unwrap();
    assert_eq!(head.recorded_at, Some(datetime!(2025-07-01 00:00:00 UTC)));
    for (seq, month) in [
        (1, "events_y2024m01"),
        (3, "events_y2024m02"),
        (6, "events_y2025m07"),
    ] {
        assert_eq!(partition_of(&target, Seq(seq)).await, month);
    }
    assert!(
        target
            .fetch_strings(
                "SELECT relname::text FROM pg_class WHERE relname = 'events_unpartitioned'"
            )
            .await
            .unwrap()
            .is_empty()
    );
    // The keys moved too: a retry replays, a reuse conflicts, and appends continue the chain.
    let replay = migrated.append(&[keyed("b")]).await.unwrap();
    assert_eq!(replay[0], Appended::Replayed(vec![before[2].clone()]));
    let conflict = migrated
        .append(&[submission(
            json!([{"event_type": "other", "user_identity": "u", "idempotency_key": "c"}]),
        )])
        .await
        .unwrap();
    assert_eq!(conflict[0], Appended::KeyConflict("c".into()));
    let next = migrated.append(&[one("next")]).await.unwrap();
    assert_eq!(created(&next[0])[0].seq, Seq(7));
    let error = target
        .execute("TRUNCATE events_y2024m01")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
}

/// `count` events of `event_type`, each with a personal value and an idempotency key.
fn events(event_type: &str, count: usize) -> serde_json::Value {
    (0..count)
        .map(|i| {
            json!({"event_type": event_type, "user_identity": format!("{event_type}-{i}"),
                   "idempotency_key": format!("{event_type}-{i}")})
        })
        .collect()
}

/// A database whose `old` tenants (the first 300 events, the others 10) recorded events 100 days
/// ago, and whose `new` tenants 250 events now; and the old month's partition.
async fn with_an_old_month(old: &[&str], new: &[&str]) -> (TestDb, String) {
    use crate::helpers::submission;

    let db = TestDb::new(Backend::Postgres).await;
    let store = db.postgres().await;
    store.migrate().await.unwrap();
    let long_ago = OffsetDateTime::now_utc() - time::Duration::days(100);
    let old: Vec<_> = old
        .iter()
        .enumerate()
        .map(|(i, tenant)| submission(tenant, events("old", if i == 0 { 300 } else { 10 })))
        .collect();
    store.append_at(&old, long_ago).await.unwrap();
    let new: Vec<_> = new
        .iter()
        .map(|tenant| submission(tenant, events("new", 250)))
        .collect();
    store.append(&new).await.unwrap();
    (db, partition_name(long_ago.date()))
}

/// Retention drops a month partition that every tenant in it has outlived, once their events
/// there are in full tiles under a signed checkpoint: one `audit.dropped` record per tenant, the
/// rows and their idempotency keys gone, and the log verifies from its first retained event,
/// online and from an export; altering what the drop left behind is caught.
#[tokio::test]
async fn retention_drops_a_month_every_tenant_in_it_has_outlived() {
    use crate::helpers::{settings_for, spawn_with};
    use crate::integrity::{export, run_documented_checker, verify, verify_offline};

    let (db, old_month) = with_an_old_month(&["default", "other"], &["default", "other"]).await;
    let mut settings = settings_for(&db);
    settings.retention.max_age_days = 30;
    settings.retention.check_interval_secs = 1;
    settings.integrity.checkpoint_interval_secs = 1;
    let app = spawn_with(db, settings).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while partitions(&app.db).await.contains(&old_month) {
        assert!(
            std::time::Instant::now() < deadline,
            "{old_month} was not dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let records = app.get_ok("/events?event_type=audit.dropped").await["events"].clone();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0]["event_data"];
    assert_eq!(record["dropped"], json!([1, 300]));
    assert_eq!(record["partition"], json!(old_month));
    assert_eq!(
        record["reason"],
        "retention: recorded more than 30 days ago"
    );
    assert_eq!(records[0]["recorded_by"], "auditor-retention");
    let old = app.get_ok("/events?event_type=old").await["events"].clone();
    assert_eq!(old, json!([]), "the dropped rows are gone");
    let first = app.get_ok("/events?limit=1").await["events"][0].clone();
    assert_eq!(first["seq"], 301);
    let prefixes = app
        .db
        .fetch_strings(
            "SELECT tenant || ':' || through_seq || ':' || partition FROM dropped_prefixes \
             ORDER BY tenant",
        )
        .await
        .unwrap();
    assert_eq!(
        prefixes,
        [
            format!("default:300:{old_month}"),
            format!("other:10:{old_month}")
        ]
    );
    let keys = app
        .db
        .fetch_strings(
            "SELECT idempotency_key FROM idempotency_keys WHERE idempotency_key LIKE 'old-%'",
        )
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");

    let report = verify(&app, &[]);
    let out = String::from_utf8_lossy(&report.stdout).into_owned();
    assert!(report.status.success(), "{out}");
    let key_of_default = app.get_ok("/keys").await["keys"][0]["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let exported = export(&app);
    let text = std::fs::read_to_string(&exported).unwrap();
    assert_eq!(text.matches("\"dropped_prefix\"").count(), 2);
    let signer = auditor::integrity::LogSigner::load(
        &app.settings.integrity.signing_key_file,
        &app.settings.integrity.log_origin,
    )
    .unwrap();
    let other_key = signer.verifier_key(&TenantId::new("other"));
    let offline = verify_offline(&exported, &key_of_default, &["--public-key", &other_key]);
    let out = String::from_utf8_lossy(&offline.stdout).into_owned();
    assert!(offline.status.success(), "{out}");
    // The checker in the docs: through the API and the tiles, and offline from the export.
    for export in [None, Some(exported.as_path())] {
        let checked = run_documented_checker(&app, &key_of_default, export).await;
        let out = String::from_utf8_lossy(&checked.stdout).into_owned();
        let err = String::from_utf8_lossy(&checked.stderr).into_owned();
        assert!(checked.status.success(), "{export:?}: {out}{err}");
        assert!(out.starts_with("552 events, "), "{out}");
    }

    // The chain hash kept for the prefix no longer links to the first retained event.
    app.db
        .execute(
            "ALTER TABLE dropped_prefixes DISABLE TRIGGER dropped_prefixes_are_never_changed; \
             UPDATE dropped_prefixes SET chain_hash = sha256('forged') WHERE tenant = 'default'",
        )
        .await
        .unwrap();
    let report = verify(&app, &[]);
    let out = String::from_utf8_lossy(&report.stdout).into_owned();
    assert!(!report.status.success(), "{out}");
    assert!(out.contains("seq 301: prev_hash does not link"), "{out}");
    // Without the prefix, the log has lost its first 300 events.
    app.db
        .execute("DELETE FROM dropped_prefixes WHERE tenant = 'default'")
        .await
        .unwrap();
    let report = verify(&app, &[]);
    let out = String::from_utf8_lossy(&report.stdout).into_owned();
    assert!(out.contains("seq 1: missing or out of order"), "{out}");
}

/// A month stays while any tenant with events in it keeps them: its rows past their period
/// lose their personal fields, but the partition is not dropped.
#[tokio::test]
async fn a_month_stays_while_a_tenant_in_it_keeps_its_events() {
    use crate::helpers::{settings_for, spawn_with};

    let (db, old_month) = with_an_old_month(&["default", "keeper"], &["default"]).await;
    let mut settings = settings_for(&db);
    settings.retention.max_age_days = 30;
    settings.retention.tenants.insert("keeper".into(), 0);
    settings.retention.check_interval_secs = 1;
    settings.integrity.checkpoint_interval_secs = 1;
    let app = spawn_with(db, settings).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while app.get_ok("/events?event_type=audit.erased").await["events"] == json!([]) {
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Two more runs of retention, each of which would have dropped the month.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(partitions(&app.db).await.contains(&old_month));
    assert_eq!(
        app.get_ok("/events?event_type=audit.dropped").await["events"],
        json!([])
    );
    let kept = app
        .db
        .fetch_strings("SELECT user_identity FROM events WHERE tenant = 'keeper' LIMIT 1")
        .await
        .unwrap();
    assert_eq!(kept, ["old-0"]);
}

/// Two instances dropping the same partition at once: one drops it with its record, the other
/// finds it gone (`Conflict`, which retention takes as "plan again") and appends nothing.
#[tokio::test]
async fn two_instances_dropping_one_partition_drop_it_once() {
    use auditor::integrity::Frontier;
    use auditor::integrity::dropped::{DroppedPrefix, stored_leaves};
    use auditor::store::StoreError;

    use crate::helpers::submission;

    let (db, store) = migrated().await;
    let tenant = TenantId::default();
    store
        .append_at(
            &[submission("default", events("old", 300))],
            datetime!(2025-01-10 00:00:00 UTC),
        )
        .await
        .unwrap();
    store
        .append(&[submission("default", events("new", 300))])
        .await
        .unwrap();
    let partition = store
        .oldest_partition(OffsetDateTime::now_utc())
        .await
        .unwrap()
        .expect("the old month");
    assert_eq!(partition.name, "events_y2025m01");
    let range = partition.tenants[0].clone();
    assert_eq!((range.first, range.through), (Seq(1), Seq(300)));
    let mut frontier = Frontier::default();
    stored_leaves(&store, &tenant, 0, 300, |leaves| {
        for leaf in leaves {
            frontier.push(*leaf);
        }
    })
    .await
    .unwrap()
    .unwrap();
    let prefixes = [(
        tenant.clone(),
        DroppedPrefix {
            through: range.through,
            chain_hash: range.through_hash,
            frontier,
        },
    )];
    let records = [submission(
        "default",
        json!([{"event_type": "dropped", "user_identity": "r"}]),
    )];
    let other = db.postgres().await;
    let (first, second) = tokio::join!(
        store.drop_partition(&partition, &prefixes, &records),
        other.drop_partition(&partition, &prefixes, &records),
    );
    let outcomes = [first, second];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(StoreError::Conflict(_)))),
        "{outcomes:?}"
    );
    assert!(!partitions(&db).await.contains(&partition.name));
    let left = store.scan(&tenant, Seq(0), 1000).await.unwrap();
    assert_eq!(left.len(), 301, "300 new events and one record");
    assert_eq!(left[0].seq, Seq(301));
    assert_eq!(
        store.dropped_prefix(&tenant).await.unwrap(),
        Some(prefixes[0].1.clone())
    );
}
