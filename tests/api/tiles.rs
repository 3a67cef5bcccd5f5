//! The log read as a C2SP `tlog-tiles` client would: checkpoint, hash tiles and entry bundles at
//! the spec's paths, the tree head recomputed from them alone (RFC 9162 §2.1.1).

use reqwest::Method;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use auditor::integrity::proofs;
use auditor::integrity::tiles::TileId;
use auditor::integrity::verify::verify_store;
use auditor::model::{Seq, TenantId};
use auditor::store::Store;

use crate::helpers::{
    ADMIN, Backend, READER, TestApp, TestDb, WRITER, pre_tiles_schema_sql, pre_tiles_tree_sql,
    spawn_app, submission,
};

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// RFC 9162 MTH over leaf hashes.
fn tree_hash(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            sha256(&[&[1], &tree_hash(&leaves[..k]), &tree_hash(&leaves[k..])])
        }
    }
}

async fn fetch(app: &TestApp, path: &str) -> (u16, Vec<u8>) {
    let response = app
        .request(Method::GET, &format!("/logs/default/{path}"), Some(READER))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

fn hashes(data: &[u8]) -> Vec<[u8; 32]> {
    data.chunks(32).map(|c| c.try_into().unwrap()).collect()
}

/// Splits an entry bundle: each entry after its big-endian u16 length.
fn entries(bundle: &[u8]) -> Vec<Vec<u8>> {
    let mut rest = bundle;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let length = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        out.push(rest[2..2 + length].to_vec());
        rest = &rest[2 + length..];
    }
    out
}

async fn a_tiles_client_recomputes_the_signed_root(backend: Backend) {
    let app = spawn_app(backend).await;
    let batch: Vec<_> = (0..300)
        .map(|i| json!({"event_type": "t", "user_identity": format!("u{i}"), "event_data": {"i": i}}))
        .collect();
    let response = app.post_json("/events", WRITER, &json!(batch)).await;
    assert_eq!(response.status(), 201);
    let redact = app
        .post_json(
            &format!(
                "/events/{}/redact",
                app.get_ok("/events?limit=1").await["events"][0]["id"]
                    .as_str()
                    .unwrap()
            ),
            ADMIN,
            &json!({"reason": "test"}),
        )
        .await;
    assert_eq!(redact.status(), 201);
    let issued = app
        .request(Method::POST, "/checkpoints", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert!(issued.status().is_success());

    let (status, note) = fetch(&app, "checkpoint").await;
    assert_eq!(status, 200);
    let note = String::from_utf8(note).unwrap();
    let lines: Vec<&str> = note.lines().collect();
    assert_eq!(lines[1], "301");
    let root =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, lines[2]).unwrap();

    // 301 leaves: level-0 tiles 000 (full) and 001.p/45; one level-1 hash (leaves 0..256).
    let (status, full) = fetch(&app, "tile/0/000").await;
    assert_eq!(status, 200);
    let (status, partial) = fetch(&app, "tile/0/001.p/45").await;
    assert_eq!(status, 200);
    let leaves: Vec<[u8; 32]> = hashes(&full).into_iter().chain(hashes(&partial)).collect();
    assert_eq!(leaves.len(), 301);
    assert_eq!(
        tree_hash(&leaves).to_vec(),
        root,
        "the signed root, from tiles alone"
    );
    let (status, upper) = fetch(&app, "tile/1/000.p/1").await;
    assert_eq!(status, 200);
    assert_eq!(hashes(&upper), vec![tree_hash(&leaves[..256])]);

    // Each entry hashes (with 0x00) to its leaf; the redacted event's entry is unchanged.
    let (status, bundle) = fetch(&app, "tile/entries/000").await;
    assert_eq!(status, 200);
    let (_, rest) = fetch(&app, "tile/entries/001.p/45").await;
    let all: Vec<Vec<u8>> = entries(&bundle).into_iter().chain(entries(&rest)).collect();
    assert_eq!(all.len(), 301);
    for (entry, leaf) in all.iter().zip(&leaves) {
        assert_eq!(&sha256(&[&[0], entry]), leaf);
    }
    // A version 2 entry holds commitments, not personal data: the user identity `u0` is not
    // in it, and its commitment opens with the salt the event's secret gives.
    let first: serde_json::Value = serde_json::from_slice(&all[0]).unwrap();
    assert_eq!(
        (first["seq"].clone(), first["v"].clone()),
        (json!(1), json!(2))
    );
    assert!(!String::from_utf8_lossy(&all[0]).contains("u0"));
    let event = app.get_ok("/events?limit=1").await["events"][0].clone();
    assert_eq!(event["user_identity"], "u0");
    // Its payload was redacted: the secret is gone, the other fields' salts are kept.
    assert_eq!(event["salt_secret"], serde_json::Value::Null);
    let salt = hex::decode(event["erased"]["salts"]["user_identity"].as_str().unwrap()).unwrap();
    assert_eq!(
        first["user_identity"],
        hex::encode(sha256(&[&salt, b"\"u0\""]))
    );

    // Beyond the log, malformed, someone else's log, no credentials.
    assert_eq!(fetch(&app, "tile/0/001").await.0, 404);
    assert_eq!(fetch(&app, "tile/0/001.p/46").await.0, 404);
    assert_eq!(fetch(&app, "tile/1/000").await.0, 404);
    assert_eq!(fetch(&app, "tile/0/1").await.0, 400);
    assert_eq!(fetch(&app, "tile/0/000.p/256").await.0, 400);
    let other = app
        .request(Method::GET, "/logs/other/tile/0/000", Some(READER))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let anonymous = app
        .request(Method::GET, "/logs/default/tile/0/000", None)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let writer = app
        .request(Method::GET, "/logs/default/tile/0/000", Some(WRITER))
        .send()
        .await
        .unwrap();
    assert_eq!(writer.status(), 403);
}

/// Appends `n` events to the default tenant in batches of up to 100.
async fn append_events<S: Store>(store: &S, n: usize) {
    for start in (0..n).step_by(100) {
        let batch: Vec<_> = (start..n.min(start + 100))
            .map(|i| json!({"event_type": "t", "user_identity": format!("u{i}"), "event_data": {"i": i}}))
            .collect();
        store
            .append(&[submission("default", json!(batch))])
            .await
            .unwrap();
    }
}

/// Everything the tree serves, as JSON: roots at sizes across tile boundaries, inclusion and
/// consistency proofs between them, and every hash tile of levels 0 and 1 (full or partial).
async fn served_tree<S: Store>(store: &S) -> serde_json::Value {
    let tenant = TenantId::default();
    let head = store.head(&tenant).await.unwrap().unwrap();
    let size = head.frontier.size();
    let sizes: Vec<u64> = [1, 2, 255, 256, 257, 511, 512, 513, 600, size]
        .into_iter()
        .filter(|s| *s <= size)
        .collect();
    let mut served = Vec::new();
    for &at in &sizes {
        served.push(json!(
            proofs::consistency(store, &tenant, 1, at)
                .await
                .unwrap()
                .to_root
        ));
        for &from in sizes.iter().filter(|from| **from <= at) {
            served.push(json!(
                proofs::consistency(store, &tenant, from, at).await.unwrap()
            ));
        }
        for seq in [1, 2, 200, 256, 257, 512, 513, at] {
            if seq <= at {
                served.push(json!(
                    proofs::inclusion(store, &tenant, Seq(seq as i64), at)
                        .await
                        .unwrap()
                ));
            }
        }
    }
    let ids: Vec<TileId> = (0..=size / 256)
        .map(|index| TileId { level: 0, index })
        .chain([TileId { level: 1, index: 0 }])
        .collect();
    let tiles = proofs::tiles(store, &tenant, &head.frontier, &ids)
        .await
        .unwrap();
    for id in &ids {
        served.push(json!(tiles.get(id)));
    }
    json!(served)
}

/// A log written with `merkle_nodes` and a head frontier (before migration 0007) serves the same
/// roots, proofs and tiles from tiles afterwards, verifies, and goes on growing.
async fn migration_0007_carries_a_node_per_row_tree_over_to_tiles(backend: Backend) {
    let db = TestDb::new(backend).await;
    match backend {
        Backend::Sqlite => carried_over(&db, || db.sqlite()).await,
        Backend::Postgres => carried_over(&db, || db.postgres()).await,
    }
}

async fn carried_over<S: Store, F: Future<Output = S>>(db: &TestDb, open: impl Fn() -> F) {
    let tenant = TenantId::default();
    let store = open().await;
    store.migrate().await.unwrap();
    append_events(&store, 700).await;
    // As the code before 0007 recorded them (SQLite's 0011 copies the events into a table
    // without the version 2 columns).
    crate::helpers::rewrite_as_version_1(db, &Default::default()).await;
    let before = served_tree(&store).await;
    let root = store.head(&tenant).await.unwrap().unwrap().frontier.root();
    let leaves: Vec<_> = store
        .scan(&tenant, Seq(0), 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.leaf_hash)
        .collect();
    drop(store);

    // The same log as the code before 0007 stored it.
    let (old_tree, old_root) = pre_tiles_tree_sql(db.backend, "default", &leaves);
    assert_eq!(old_root, root);
    db.execute(&pre_tiles_schema_sql(db.backend)).await.unwrap();
    db.execute(&old_tree).await.unwrap();

    let store = open().await;
    // SQLite counts one version number, so every migration after 0006 runs again; PostgreSQL
    // records each, and 0007's record alone was removed.
    let pending = match db.backend {
        Backend::Sqlite => crate::helpers::migrations_after(db.backend, 6),
        Backend::Postgres => vec![7],
    };
    assert_eq!(store.pending_migrations().await.unwrap(), pending);
    store.migrate().await.unwrap();
    assert_eq!(served_tree(&store).await, before);
    let verified = verify_store(&store, &[], &[], |_, _| {}).await.unwrap();
    assert!(verified.iter().all(Result::is_ok), "{verified:?}");
    assert!(
        db.execute("SELECT * FROM merkle_nodes").await.is_err(),
        "merkle_nodes is dropped"
    );

    // Appends continue the tree, across the next tile boundaries.
    append_events(&store, 400).await;
    let events = store.scan(&tenant, Seq(0), 2000).await.unwrap();
    let all: Vec<[u8; 32]> = events.iter().map(|e| e.leaf_hash.0).collect();
    let head = store.head(&tenant).await.unwrap().unwrap();
    assert_eq!(head.frontier.size(), 1100);
    assert_eq!(head.frontier.root().0, tree_hash(&all));
    let verified = verify_store(&store, &[], &[], |_, _| {}).await.unwrap();
    assert!(verified.iter().all(Result::is_ok), "{verified:?}");
}

crate::both_backends!(
    a_tiles_client_recomputes_the_signed_root,
    migration_0007_carries_a_node_per_row_tree_over_to_tiles,
);
