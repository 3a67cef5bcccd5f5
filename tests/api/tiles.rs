//! The log read as a C2SP `tlog-tiles` client would: checkpoint, hash tiles and entry bundles at
//! the spec's paths, the tree head recomputed from them alone (RFC 9162 §2.1.1).

use reqwest::Method;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::helpers::{ADMIN, Backend, READER, TestApp, WRITER, spawn_app};

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
    let first: serde_json::Value = serde_json::from_slice(&all[0]).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["user_identity"], "u0");

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

crate::both_backends!(a_tiles_client_recomputes_the_signed_root);
