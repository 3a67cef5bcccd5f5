//! PostgreSQL only: one GIN index, `events_filters` (migration 0006), answers the equality
//! filters that have no B-tree of their own. A rare value is read from it, a frequent one by
//! walking `seq`; a redaction takes the erased payload out of it; the migration carries an
//! existing log over; the store keeps the planner's statistics current by itself.

use std::path::Path;

use auditor::model::{EventQuery, TenantId};
use auditor::store::postgres::{FILTER_DOCUMENT, KNOWN_KEYS, partition_name};
use auditor::store::{PgStore, Store};
use serde_json::json;
use sqlx::Connection;
use time::OffsetDateTime;

use crate::helpers::{Backend, TestDb, created, redaction, submission};

fn query(text: &str) -> EventQuery {
    let pairs: Vec<(String, String)> = text
        .split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    EventQuery::parse(&pairs).unwrap()
}

/// The partition of this month, where the tests' events land.
fn this_month() -> String {
    partition_name(OffsetDateTime::now_utc().date())
}

/// How many row versions `events_filters` returns for a containment in this month's partition,
/// live or dead: the index's own answer, before the heap says which rows are visible.
async fn index_entries(db: &TestDb, document: serde_json::Value) -> i64 {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("SET enable_seqscan = off; SET enable_indexscan = off")
        .execute(&mut conn)
        .await
        .unwrap();
    let sql = format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT 1 FROM {} WHERE {FILTER_DOCUMENT} @> $1",
        this_month()
    );
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(document)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let line = plan
        .iter()
        .find(|line| line.contains("Bitmap Index Scan on") && line.contains("filter_document"))
        .unwrap_or_else(|| panic!("the filter index was not used: {plan:?}"));
    let rows = line.split("rows=").nth(1).unwrap();
    rows.split(' ').next().unwrap().parse().unwrap()
}

/// A redaction erases the payload in a new row version without it; the store then vacuums the
/// partition, so the old version's entries leave the index and nothing of the payload is found
/// there, not even a dead row's.
#[tokio::test]
async fn a_redaction_takes_the_payload_out_of_the_filter_index() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.postgres().await;
    store.migrate().await.unwrap();
    let secret = json!({"default": {"d": {"ssn": "123-45-6789"}}});
    let outcome = store
        .append(&[submission(
            "default",
            json!([
                {"event_type": "kyc", "user_identity": "alice",
                 "event_data": {"ssn": "123-45-6789", "plan": {"tier": "gold"}}},
                {"event_type": "kyc", "user_identity": "bob", "event_data": {"plan": {"tier": "gold"}}}
            ]),
        )])
        .await
        .unwrap();
    let target = created(&outcome[0])[0].clone();
    assert_eq!(index_entries(&db, secret.clone()).await, 1);

    store.append(&[redaction(&target)]).await.unwrap();
    store.settle().await;
    assert_eq!(index_entries(&db, secret).await, 0);
    let gold = json!({"default": {"d": {"plan": {"tier": "gold"}}}});
    assert_eq!(
        index_entries(&db, gold).await,
        1,
        "bob's event is still there"
    );
    let found = store
        .query(&TenantId::default(), &query("event_data.ssn=123-45-6789"))
        .await
        .unwrap();
    assert!(found.is_empty());
}

/// The shape of the plan for a value of each field served by `events_filters`: a rare value is
/// read from the index (then its few matches sorted by `seq`), a frequent one by walking the
/// primary key in `seq` order until the page is full, which reads about a page's worth of rows
/// instead of sorting every match.
#[tokio::test]
async fn rare_values_are_read_from_the_filter_index_and_frequent_ones_in_seq_order() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.postgres().await;
    store.migrate().await.unwrap();
    let events: Vec<serde_json::Value> = (0..4000)
        .map(|i| {
            let v = |common: &str| {
                if i == 1234 {
                    "rare".to_owned()
                } else {
                    format!("{common}{}", i % 2)
                }
            };
            json!({
                "event_type": v("type"), "user_identity": format!("u{i}"), "entity": v("entity"),
                "entity_id": v("id"), "property": v("property"), "source": v("source"),
                "ip": if i == 1234 { "10.9.9.9".to_owned() } else { format!("10.0.0.{}", i % 2) },
                "action": if i == 1234 { "delete" } else { ["create", "read"][i % 2] },
                "outcome": if i == 1234 { "failure" } else { "success" },
                "event_data": {"kind": v("kind"), "n": i}
            })
        })
        .collect();
    for chunk in events.chunks(1000) {
        store
            .append(&[submission("default", json!(chunk))])
            .await
            .unwrap();
    }
    let mut rare_writer = submission(
        "default",
        json!([{"event_type": "t", "user_identity": "u"}]),
    );
    rare_writer.recorded_by = "rare".into();
    store.append(&[rare_writer]).await.unwrap();
    // As after the store's own ANALYZE and any VACUUM (which merges the index's pending list).
    db.execute("VACUUM ANALYZE").await.unwrap();
    let partition = this_month();
    for (field, rare, frequent) in [
        ("event_type", "rare", "type1"),
        ("entity", "rare", "entity1"),
        ("entity_id", "rare", "id1"),
        ("property", "rare", "property1"),
        ("source", "rare", "source1"),
        ("ip", "10.9.9.9", "10.0.0.1"),
        ("event_data.kind", "rare", "kind1"),
        ("action", "delete", "read"),
        ("outcome", "failure", "success"),
        ("recorded_by", "rare", "tester"),
    ] {
        let plan = store
            .explain(&TenantId::default(), &query(&format!("{field}={rare}")))
            .await
            .unwrap();
        assert!(
            plan.contains(&format!(
                "Bitmap Index Scan on {partition}_events_filter_document_idx"
            )),
            "{field}={rare}: {plan}"
        );
        let plan = store
            .explain(&TenantId::default(), &query(&format!("{field}={frequent}")))
            .await
            .unwrap();
        assert!(
            plan.contains(&format!("Index Scan using {partition}_pkey"))
                && !plan.contains("Sort  (")
                && !plan.contains(&format!("Seq Scan on {partition}")),
            "{field}={frequent}: {plan}"
        );
        let page = store
            .query(&TenantId::default(), &query(&format!("{field}={frequent}")))
            .await
            .unwrap();
        assert_eq!(page.len(), 101, "{field}={frequent}");
        assert!(page.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}

/// Statistics follow the appends without anyone running ANALYZE: a partition that has grown by
/// 10,000 rows (or half its size) is analysed by the store in the background.
#[tokio::test]
async fn the_store_analyses_the_partition_it_appends_to() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.postgres().await;
    store.migrate().await.unwrap();
    let reltuples = || async {
        db.fetch_strings(&format!(
            "SELECT reltuples::int8::text FROM pg_class WHERE relname = '{}'",
            this_month()
        ))
        .await
        .unwrap()
        .remove(0)
        .parse::<i64>()
        .unwrap()
    };
    let batch: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({"event_type": "t", "user_identity": format!("u{}", i % 7)}))
        .collect();
    for _ in 0..9 {
        store
            .append(&[submission("default", json!(batch))])
            .await
            .unwrap();
    }
    store.settle().await;
    assert!(reltuples().await <= 0, "not analysed before 10,000 rows");
    store
        .append(&[submission("default", json!(batch))])
        .await
        .unwrap();
    store.settle().await;
    assert_eq!(reltuples().await, 10_000);
    let analysed = db
        .fetch_strings(&format!(
            "SELECT attname::text FROM pg_stats WHERE tablename = '{}' AND attname = 'user_identity'",
            this_month()
        ))
        .await
        .unwrap();
    assert_eq!(analysed, ["user_identity"]);
}

/// A log written before migration 0006 is found by every filter after it, the redacted payload
/// included (not found), and the B-trees the GIN index replaces are gone.
/// Pages of the pending list of this month's `events_filters` that a merge would move now.
async fn pending_pages(db: &TestDb) -> i64 {
    db.fetch_strings(&format!(
        "SELECT gin_clean_pending_list(i.indexrelid)::text FROM pg_index i \
         JOIN pg_inherits h ON h.inhrelid = i.indexrelid \
         WHERE h.inhparent = 'events_filters'::regclass AND i.indrelid = '{}'::regclass",
        this_month()
    ))
    .await
    .unwrap()
    .remove(0)
    .parse()
    .unwrap()
}

/// Every scan of a GIN index reads its whole pending list, so once appends pause the store
/// merges it into the index.
#[tokio::test]
async fn the_pending_list_is_merged_once_appends_pause() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.postgres().await;
    store.migrate().await.unwrap();
    let batch: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({"event_type": "t", "user_identity": "u", "entity_id": format!("e{i}")}))
        .collect();
    store
        .append(&[submission("default", json!(batch))])
        .await
        .unwrap();
    store.settle().await;
    assert_eq!(pending_pages(&db).await, 0, "merged after the pause");
    // The same append again, merged here by hand: the list was not empty.
    let other = db.postgres().await;
    other
        .append(&[submission("default", json!(batch))])
        .await
        .unwrap();
    assert!(
        pending_pages(&db).await > 0,
        "a fresh append fills the list"
    );
}

#[tokio::test]
async fn migration_0006_indexes_an_existing_log() {
    let db = TestDb::new(Backend::Postgres).await;
    let old = tempfile::tempdir().unwrap();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations/postgres");
    for file in [
        "0001_events_and_users.sql",
        "0002_filter_indexes.sql",
        "0003_partition_events_by_month.sql",
        "0004_chain_heads_recorded_at.sql",
        "0005_users_changed_notify.sql",
        // The tree's storage, which today's appender writes; independent of 0006.
        "0007_merkle_tiles.sql",
    ] {
        std::fs::copy(migrations.join(file), old.path().join(file)).unwrap();
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    // Appending needs nothing of 0006, so today's store writes the log the old schema holds.
    let store: PgStore = db.postgres().await;
    // Today's store writes the columns version 2 added; the log is otherwise the old one.
    db.execute(crate::helpers::VERSION_2_COLUMNS_POSTGRES)
        .await
        .unwrap();
    // The copied migrations include 0007 (the tiles), which appending needs.
    let pending: Vec<i64> = crate::helpers::migrations_after(Backend::Postgres, 5)
        .into_iter()
        .filter(|version| *version != 7)
        .collect();
    assert_eq!(store.pending_migrations().await.unwrap(), pending);
    let outcome = store
        .append(&[
            submission(
                "default",
                json!([
                    {"event_type": "a", "user_identity": "alice", "action": "create",
                     "entity": "account", "entity_id": "1", "property": "status", "source": "web",
                     "ip": "10.0.0.1", "outcome": "success", "idempotency_key": "k1",
                     "event_data": {"ssn": "1", "plan": {"tier": "gold"}}},
                    {"event_type": "b", "user_identity": "bob", "action": "delete",
                     "entity": "invoice", "entity_id": "2", "outcome": "failure",
                     "event_data": {"plan": {"tier": "gold"}, "note": null}}
                ]),
            ),
            submission(
                "other",
                json!([{"event_type": "a", "user_identity": "alice", "entity_id": "1",
                        "event_data": {"plan": {"tier": "gold"}}}]),
            ),
        ])
        .await
        .unwrap();
    let first = created(&outcome[0])[0].clone();
    // A redaction as the service made one then: its record appended, the payload erased by the
    // one UPDATE the schema's trigger allowed.
    let mut record = redaction(&first);
    record.events[0].erases = None;
    store.append(&[record]).await.unwrap();
    db.execute(&format!(
        "UPDATE events SET event_data = NULL, redacted_at = now() WHERE seq = {}",
        first.seq
    ))
    .await
    .unwrap();

    store.migrate().await.unwrap();
    let amends = format!("amends={}", first.id);
    let cases = [
        ("event_type=a", vec![1]),
        ("event_type=b", vec![2]),
        ("user_identity=alice", vec![1]),
        ("action=delete", vec![2, 3]),
        ("entity=invoice", vec![2]),
        ("entity_id=1", vec![1]),
        ("property=status", vec![1]),
        ("source=web", vec![1]),
        ("ip=10.0.0.1", vec![1]),
        ("outcome=failure", vec![2]),
        ("recorded_by=tester", vec![1, 2]),
        ("idempotency_key=k1", vec![1]),
        ("event_data.plan.tier=gold", vec![2]),
        ("event_data.note=null", vec![2]),
        ("event_data.ssn=1", vec![]),
        (amends.as_str(), vec![3]),
    ];
    for (text, expected) in cases {
        let found = store
            .query(&TenantId::default(), &query(text))
            .await
            .unwrap();
        let seqs: Vec<i64> = found.iter().map(|e| e.seq.0).collect();
        assert_eq!(seqs, expected, "{text}");
    }
    let other = store
        .query(&TenantId::new("other"), &query("entity_id=1"))
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    let indexes = db
        .fetch_strings(
            "SELECT relname::text FROM pg_class WHERE relkind = 'I' AND relname LIKE 'events%' \
             ORDER BY 1",
        )
        .await
        .unwrap();
    assert_eq!(
        indexes,
        [
            "events_amends",
            "events_filters",
            "events_id",
            "events_occurred_at",
            "events_pkey",
            "events_user_identity"
        ]
    );
}

/// A batch's idempotency keys are looked up one by one through the keys' and the events'
/// primary keys, however many the batch holds: joined as sets, a thousand keys made the
/// planner read every event of the log (seconds at a million events).
#[tokio::test]
async fn a_batch_of_idempotency_keys_is_looked_up_by_index() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.postgres().await;
    store.migrate().await.unwrap();
    for chunk in 0..5 {
        let batch: Vec<serde_json::Value> = (0..1000)
            .map(|i| json!({"event_type": "t", "user_identity": "u", "idempotency_key": format!("k{chunk}-{i}")}))
            .collect();
        store
            .append(&[submission("default", json!(batch))])
            .await
            .unwrap();
    }
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("ANALYZE").execute(&mut conn).await.unwrap();
    let keys: Vec<String> = (0..1000).map(|i| format!("k2-{i}")).collect();
    let tenants = vec!["default"; keys.len()];
    let sql = format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {}", *KNOWN_KEYS);
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&tenants)
        .bind(&keys)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    // The empty partitions of the months ahead are planned as scans and never run.
    let scans_run = plan
        .iter()
        .filter(|line| line.contains("Seq Scan") && !line.contains("never executed"))
        .count();
    let plan = plan.join("\n");
    assert_eq!(scans_run, 0, "{plan}");
    assert!(plan.contains("idempotency_keys_pkey"), "{plan}");
    let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM ({}) found",
        *KNOWN_KEYS
    )))
    .bind(&tenants)
    .bind(&keys)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(found, 1000);
}
