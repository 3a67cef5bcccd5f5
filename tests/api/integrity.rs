//! Tamper evidence, checked from the outside: checkpoint notes by a verifier written from the
//! C2SP `signed-note` and `tlog-checkpoint` texts alone, proofs by recomputing roots, and
//! tampering the way an attacker with database access would, caught by `auditor verify`.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::helpers::{ADMIN, Backend, TestApp, spawn_app};

const BIN: &str = env!("CARGO_BIN_EXE_auditor");

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    sha256(&[&[1], left, right])
}

fn unhex(text: &Value) -> [u8; 32] {
    hex::decode(text.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

/// MTH(D[n]) by RFC 9162 §2.1.1, over the leaf hashes.
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// Recomputes the root from an inclusion proof, by the RFC 9162 §2.1.3.2 steps.
fn root_from_inclusion(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    proof: &[[u8; 32]],
) -> Option<[u8; 32]> {
    let (mut fnode, mut snode, mut r) = (index, size - 1, leaf);
    for p in proof {
        if snode == 0 {
            return None;
        }
        if fnode % 2 == 1 || fnode == snode {
            r = node(p, &r);
            while fnode % 2 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

/// Recomputes both roots from a consistency proof, by the RFC 9162 §2.1.4.2 steps.
fn roots_from_consistency(
    first: u64,
    second: u64,
    old_root: [u8; 32],
    proof: &[[u8; 32]],
) -> Option<([u8; 32], [u8; 32])> {
    let mut path = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, old_root);
    }
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode % 2 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return None;
        }
        if fnode % 2 == 1 || fnode == snode {
            fr = node(c, &fr);
            sr = node(c, &sr);
            while fnode % 2 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some((fr, sr))
}

/// A C2SP signed-note verifier key: `<name>+<hex key id>+<base64(0x01 ‖ key)>`.
struct VerifierKey {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

fn parse_verifier_key(text: &str) -> VerifierKey {
    let parts: Vec<&str> = text.splitn(3, '+').collect();
    assert_eq!(parts.len(), 3, "{text}");
    let id: [u8; 4] = hex::decode(parts[1]).unwrap().try_into().unwrap();
    let encoded = STANDARD.decode(parts[2]).unwrap();
    assert_eq!(encoded[0], 0x01, "Ed25519 algorithm byte");
    let key: [u8; 32] = encoded[1..].try_into().unwrap();
    // Key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4].
    let expected = sha256(&[parts[0].as_bytes(), b"\n", &[0x01], &key]);
    assert_eq!(id, expected[..4], "key id");
    VerifierKey {
        name: parts[0].to_owned(),
        id,
        key: VerifyingKey::from_bytes(&key).unwrap(),
    }
}

/// Checks a signed note line by line; returns (origin, tree size, root).
fn open_checkpoint(note: &str, key: &VerifierKey) -> (String, u64, [u8; 32]) {
    let (text, signatures) = note
        .split_once("\n\n")
        .expect("blank line before signatures");
    let text = format!("{text}\n");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "origin, size and root, no extension lines: {text:?}"
    );
    assert!(!lines[0].is_empty());
    let size: u64 = lines[1].parse().expect("decimal size");
    assert_eq!(lines[1], size.to_string(), "no leading zeros");
    let root: [u8; 32] = STANDARD.decode(lines[2]).unwrap().try_into().unwrap();
    assert!(signatures.ends_with('\n'));
    let mut verified = false;
    for line in signatures.lines() {
        let rest = line
            .strip_prefix("\u{2014} ")
            .expect("signature lines start with an em dash and a space");
        let (name, blob) = rest.split_once(' ').unwrap();
        let blob = STANDARD.decode(blob).unwrap();
        if name == key.name && blob[..4] == key.id {
            let signature = Signature::from_slice(&blob[4..]).unwrap();
            key.key
                .verify(text.as_bytes(), &signature)
                .expect("valid Ed25519 signature over the text");
            verified = true;
        }
    }
    assert!(verified, "a signature by {}", key.name);
    (lines[0].to_owned(), size, root)
}

async fn seed(app: &TestApp, n: usize) -> Vec<Value> {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"event_type": "billed", "user_identity": format!("u{}", i % 3), "event_data": {"amount": i, "note": "x"}}))
        .collect();
    app.record(Value::from(events))
        .await
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) async fn checkpoint(app: &TestApp) -> Value {
    let response = app
        .request(Method::POST, "/checkpoints", Some(ADMIN))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    response.json().await.unwrap()
}

async fn checkpoints_are_c2sp_signed_notes_over_the_rfc6962_root(backend: Backend) {
    let app = spawn_app(backend).await;
    let events = seed(&app, 13).await;
    let issued = checkpoint(&app).await;

    let keys = app.get_ok("/keys").await;
    let key = parse_verifier_key(keys["keys"][0]["verifier_key"].as_str().unwrap());
    assert_eq!(key.name, "auditor.test/log/default");

    let note = app.get("/checkpoint", ADMIN).await;
    assert!(
        note.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let note = note.text().await.unwrap();
    assert_eq!(note, issued["note"].as_str().unwrap());
    let (origin, size, root) = open_checkpoint(&note, &key);
    assert_eq!(origin, "auditor.test/log/default");
    assert_eq!(size, 13);
    let leaves: Vec<[u8; 32]> = events.iter().map(|e| unhex(&e["leaf_hash"])).collect();
    assert_eq!(
        root,
        mth(&leaves),
        "the signed root is the RFC 6962 tree head"
    );
    assert_eq!(unhex(&issued["root"]), root);
    assert!(issued["issued_at"].is_string());

    let by_size = app.get_ok("/checkpoints/13").await;
    assert_eq!(by_size["note"], issued["note"]);
    assert_eq!(app.get_ok("/checkpoints/latest").await["tree_size"], 13);
    assert_eq!(app.get("/checkpoints/12", ADMIN).await.status(), 404);

    let tampered = note.replace("\n13\n", "\n14\n");
    let (text, _) = tampered.split_once("\n\n").unwrap();
    let signature_line = tampered.lines().last().unwrap();
    let blob = STANDARD
        .decode(signature_line.rsplit(' ').next().unwrap())
        .unwrap();
    let signature = Signature::from_slice(&blob[4..]).unwrap();
    assert!(
        key.key
            .verify(format!("{text}\n").as_bytes(), &signature)
            .is_err()
    );
}

async fn inclusion_and_consistency_proofs_recompute_the_roots(backend: Backend) {
    let app = spawn_app(backend).await;
    let events = seed(&app, 11).await;
    let leaves: Vec<[u8; 32]> = events.iter().map(|e| unhex(&e["leaf_hash"])).collect();
    for size in [1u64, 2, 3, 7, 8, 11] {
        let root = mth(&leaves[..size as usize]);
        for event in events.iter().take(size as usize) {
            let id = event["id"].as_str().unwrap();
            let proof = app
                .get_ok(&format!("/events/{id}/proof?tree_size={size}"))
                .await;
            let hashes: Vec<[u8; 32]> = proof["proof"]
                .as_array()
                .unwrap()
                .iter()
                .map(unhex)
                .collect();
            let index = proof["leaf_index"].as_u64().unwrap();
            assert_eq!(index + 1, event["seq"].as_u64().unwrap());
            let computed = root_from_inclusion(index, size, unhex(&event["leaf_hash"]), &hashes);
            assert_eq!(computed, Some(root), "event {index} in tree {size}");
            assert_eq!(unhex(&proof["root"]), root);
        }
        for from in 1..=size {
            let proof = app
                .get_ok(&format!("/checkpoints/consistency?from={from}&to={size}"))
                .await;
            let hashes: Vec<[u8; 32]> = proof["proof"]
                .as_array()
                .unwrap()
                .iter()
                .map(unhex)
                .collect();
            let old_root = mth(&leaves[..from as usize]);
            assert_eq!(unhex(&proof["from_root"]), old_root);
            if from == size {
                assert!(hashes.is_empty());
                continue;
            }
            assert_eq!(
                roots_from_consistency(from, size, old_root, &hashes),
                Some((old_root, root)),
                "{from} -> {size}"
            );
        }
    }
    // The default proof is against the latest checkpoint, and says so.
    let issued = checkpoint(&app).await;
    let id = events[4]["id"].as_str().unwrap();
    let proof = app.get_ok(&format!("/events/{id}/proof")).await;
    assert_eq!(proof["tree_size"], 11);
    assert_eq!(proof["checkpoint"], issued["note"]);
    for bad in ["tree_size=0", "tree_size=12", "tree_size=abc"] {
        assert_eq!(
            app.get(&format!("/events/{id}/proof?{bad}"), ADMIN)
                .await
                .status(),
            400,
            "{bad}"
        );
    }
    let early = events[9]["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/events/{early}/proof?tree_size=5"), ADMIN)
            .await
            .status(),
        400
    );
    assert_eq!(
        app.get("/checkpoints/consistency?from=5&to=3", ADMIN)
            .await
            .status(),
        400
    );
}

async fn redaction_erases_the_payload_and_the_log_still_verifies(backend: Backend) {
    let app = spawn_app(backend).await;
    let events = seed(&app, 3).await;
    let id = events[1]["id"].as_str().unwrap();
    let missing_reason = app
        .post_json(&format!("/events/{id}/redact"), ADMIN, &json!({}))
        .await;
    assert_eq!(missing_reason.status(), 422);
    let as_writer = app
        .post_json(
            &format!("/events/{id}/redact"),
            crate::helpers::WRITER,
            &json!({"reason": "gdpr"}),
        )
        .await;
    assert_eq!(as_writer.status(), 403);

    let response = app
        .post_json(
            &format!("/events/{id}/redact"),
            ADMIN,
            &json!({"reason": "GDPR art. 17 request #42"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let redaction: Value = response.json().await.unwrap();
    assert_eq!(redaction["event_type"], "audit.redacted");
    assert_eq!(redaction["recorded_by"], "admin");
    assert_eq!(redaction["amends"], id);
    assert_eq!(
        redaction["event_data"]["reason"],
        "GDPR art. 17 request #42"
    );

    let shown = app.get_ok(&format!("/events/{id}")).await;
    assert_eq!(shown["event_data"], Value::Null);
    assert!(shown["redacted_at"].is_string());
    assert_eq!(shown["leaf_hash"], events[1]["leaf_hash"]);
    assert_eq!(
        app.get_ok(&format!("/events/{id}/proof")).await["leaf_hash"],
        events[1]["leaf_hash"]
    );
    checkpoint(&app).await;
    let report = verify(&app, &[]);
    assert!(report.status.success(), "{}", text(&report.stdout));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn verify(app: &TestApp, args: &[&str]) -> std::process::Output {
    crate::helpers::with_log_key(&mut Command::new(BIN), app)
        .args(["--database-url", &app.db.url, "verify"])
        .args(args)
        .env_remove("AUDITOR_CONFIG")
        .output()
        .unwrap()
}

/// Runs `auditor export` into the test's directory, returning the file.
pub(crate) fn export(app: &TestApp) -> std::path::PathBuf {
    let file = app.db.dir.path().join("export.ndjson");
    let exported = Command::new(BIN)
        .args([
            "--database-url",
            &app.db.url,
            "export",
            "--output",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    file
}

/// Runs `auditor verify --export` with no database, trusting `key` only.
pub(crate) fn verify_offline(
    path: &std::path::Path,
    key: &str,
    extra: &[&str],
) -> std::process::Output {
    Command::new(BIN)
        .args([
            "verify",
            "--export",
            path.to_str().unwrap(),
            "--public-key",
            key,
        ])
        .args(extra)
        .env(
            "AUDITOR_DATABASE_URL",
            "sqlite:///nonexistent/never-opened.db",
        )
        .output()
        .unwrap()
}

/// Verifies an export offline against the app's published verifier key, and the system log's
/// (which the app's reads are recorded in).
pub(crate) async fn verify_export(app: &TestApp, path: &std::path::Path) -> std::process::Output {
    let key = app.get_ok("/keys").await["keys"][0]["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let system = auditor::integrity::LogSigner::load(
        &app.settings.integrity.signing_key_file,
        &app.settings.integrity.log_origin,
    )
    .unwrap()
    .verifier_key(&auditor::model::TenantId::new("_system"));
    verify_offline(path, &key, &["--public-key", &system])
}

/// Runs `auditor verify` and expects it to fail, naming `seq` and a phrase.
fn expect_caught(app: &TestApp, args: &[&str], seq: i64, phrase: &str) {
    let report = verify(app, args);
    let out = text(&report.stdout);
    assert!(!report.status.success(), "tampering went unnoticed:\n{out}");
    assert!(
        out.contains(&format!("seq {seq}:")),
        "expected seq {seq}:\n{out}"
    );
    assert!(out.contains(phrase), "expected `{phrase}`:\n{out}");
}

/// A log of 10 events with a checkpoint at 10, and the append-only triggers dropped, as an
/// attacker with database access would.
async fn tamperable(backend: Backend) -> (TestApp, Vec<Value>, String) {
    let app = spawn_app(backend).await;
    let events = seed(&app, 10).await;
    let note = checkpoint(&app).await["note"].as_str().unwrap().to_owned();
    let ok = verify(&app, &[]);
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    let drops: &[&str] = match backend {
        Backend::Sqlite => &[
            "DROP TRIGGER events_are_never_updated; DROP TRIGGER events_are_never_deleted; \
             DROP TRIGGER checkpoints_are_never_changed; DROP TRIGGER checkpoints_are_never_deleted;",
        ],
        // One transaction each: a single one would hold `events` while it waits for
        // `checkpoints`, which the server's tenant listing may hold while it waits for `events`
        // (PostgreSQL then aborts one of the two as deadlocked).
        Backend::Postgres => &[
            "DROP TRIGGER events_are_never_changed ON events",
            "DROP TRIGGER checkpoints_are_never_changed ON checkpoints",
        ],
    };
    for drop in drops {
        app.db.execute(drop).await.unwrap();
    }
    (app, events, note)
}

async fn a_changed_field_is_caught(backend: Backend) {
    let (app, _, _) = tamperable(backend).await;
    app.db
        .execute("UPDATE events SET user_identity = 'mallory' WHERE seq = 3")
        .await
        .unwrap();
    expect_caught(&app, &[], 3, "a recorded field was changed");
}

async fn a_changed_payload_is_caught(backend: Backend) {
    let (app, _, _) = tamperable(backend).await;
    app.db
        .execute(
            "UPDATE events SET event_data = '{\"amount\": 1000, \"note\": \"x\"}' WHERE seq = 4",
        )
        .await
        .unwrap();
    expect_caught(&app, &[], 4, "leaf hash mismatch");
    app.db
        .execute("UPDATE events SET event_data = NULL WHERE seq = 4")
        .await
        .unwrap();
    expect_caught(&app, &[], 4, "leaf hash mismatch");
}

async fn a_deleted_row_is_caught(backend: Backend) {
    let (app, _, _) = tamperable(backend).await;
    app.db
        .execute("DELETE FROM events WHERE seq = 5")
        .await
        .unwrap();
    expect_caught(&app, &[], 5, "missing or out of order");
}

async fn swapped_rows_are_caught(backend: Backend) {
    let (app, _, _) = tamperable(backend).await;
    let swap = match backend {
        // SQLite's rowid holds `seq` in its low bits (migration 0017), checked: both move.
        Backend::Sqlite => {
            "UPDATE events SET key = key - seq + 1000000, seq = 1000000 WHERE seq = 6; \
             UPDATE events SET key = key - 1, seq = 6 WHERE seq = 7; \
             UPDATE events SET key = key - seq + 7, seq = 7 WHERE seq = 1000000;"
        }
        Backend::Postgres => {
            "UPDATE events SET seq = -1 WHERE seq = 6; UPDATE events SET seq = 6 WHERE seq = 7; \
             UPDATE events SET seq = 7 WHERE seq = -1;"
        }
    };
    app.db.execute(swap).await.unwrap();
    expect_caught(&app, &[], 6, "seq 6:");
}

async fn a_truncated_tail_is_caught(backend: Backend) {
    let (app, _, note) = tamperable(backend).await;
    app.db
        .execute("DELETE FROM events WHERE seq > 7")
        .await
        .unwrap();
    expect_caught(&app, &[], 8, "log truncated");
    // A thorough attacker also removes the head and the checkpoints that cover the tail...
    app.db
        .execute("DELETE FROM chain_heads; DELETE FROM checkpoints WHERE tree_size > 7")
        .await
        .unwrap();
    let fooled = verify(&app, &[]);
    assert!(
        fooled.status.success(),
        "the database alone now looks whole"
    );
    // ...which a checkpoint the auditor kept still reveals.
    let kept = app.db.dir.path().join("kept-checkpoint.txt");
    std::fs::write(&kept, &note).unwrap();
    expect_caught(
        &app,
        &["--checkpoint", kept.to_str().unwrap()],
        8,
        "log truncated",
    );
}

async fn a_payload_erased_without_a_redaction_record_is_caught(backend: Backend) {
    // No trigger needs dropping: the schema allows a redaction-shaped UPDATE.
    let app = spawn_app(backend).await;
    seed(&app, 4).await;
    let now = match backend {
        Backend::Sqlite => "1700000000000000",
        Backend::Postgres => "now()",
    };
    app.db
        .execute(&format!(
            "UPDATE events SET event_data = NULL, redacted_at = {now} WHERE seq = 2"
        ))
        .await
        .unwrap();
    expect_caught(&app, &[], 2, "marked erased but nothing was erased");
    // An erasure made exactly as the service makes one (the commitment kept, the secret gone),
    // but with no record of it.
    let stored = app.get_ok("/events?limit=2").await["events"][1].clone();
    let mut event: auditor::model::Event = serde_json::from_value(stored).unwrap();
    event.redacted_at = None;
    event.event_data = Some(serde_json::from_value(json!({"amount": 1, "note": "x"})).unwrap());
    let at = time::OffsetDateTime::now_utc();
    let erased =
        auditor::integrity::commitment::erase(&event, &[auditor::model::Personal::EventData], at)
            .unwrap()
            .unwrap();
    let erased = serde_json::to_string(&erased.erased).unwrap();
    app.db
        .execute(&format!(
            "UPDATE events SET salt_secret = NULL, erased = '{erased}', redacted_at = {now} \
             WHERE seq = 2"
        ))
        .await
        .unwrap();
    expect_caught(&app, &[], 2, "fields erased without an erasure event");
    // A writer cannot forge the record through the API either: `audit.*` types are reserved.
    let id = app.get_ok("/events?limit=1").await["events"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = app
        .request(
            Method::PUT,
            &format!("/update_log/{id}"),
            Some(crate::helpers::WRITER),
        )
        .json(&json!({"event_type": "audit.redacted"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 422);
}

async fn a_deleted_tenant_is_caught_by_a_kept_checkpoint(backend: Backend) {
    let (app, _, note) = tamperable(backend).await;
    app.db
        .execute("DELETE FROM events; DELETE FROM chain_heads; DELETE FROM checkpoints")
        .await
        .unwrap();
    let kept = app.db.dir.path().join("kept-checkpoint.txt");
    std::fs::write(&kept, &note).unwrap();
    expect_caught(
        &app,
        &["--checkpoint", kept.to_str().unwrap()],
        1,
        "log truncated",
    );
}

async fn a_forged_checkpoint_is_caught(backend: Backend) {
    let (app, _, note) = tamperable(backend).await;
    let forged = note.replace("\n10\n", "\n9\n");
    let sql = format!(
        "UPDATE checkpoints SET tree_size = 9, note = '{}' WHERE tree_size = 10",
        forged.replace('\'', "''")
    );
    app.db.execute(&sql).await.unwrap();
    expect_caught(&app, &[], 9, "not signed by a trusted key");
}

async fn a_replaced_signing_key_is_caught(backend: Backend) {
    let (app, _, note) = tamperable(backend).await;
    let trusted = app.get_ok("/keys").await["keys"][0]["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    // The attacker swaps in a key of their own and re-signs the stored checkpoint with it.
    let key_file = &app.settings.integrity.signing_key_file;
    std::fs::remove_file(key_file).unwrap();
    let attacker =
        auditor::integrity::LogSigner::load_or_generate(key_file, "auditor.test/log").unwrap();
    let (origin, size, root) =
        auditor::integrity::checkpoint::parse_checkpoint_text(note.split_once("\n\n").unwrap().0)
            .map(|(o, s, r)| (o.to_owned(), s, r))
            .unwrap();
    assert_eq!(origin, "auditor.test/log/default");
    let predecessor =
        auditor::integrity::checkpoint::predecessor_line(note.split_once("\n\n").unwrap().0)
            .unwrap();
    let resigned = attacker.sign(
        &auditor::model::TenantId::default(),
        size,
        root,
        time::OffsetDateTime::now_utc(),
        predecessor,
    );
    let sql = format!(
        "UPDATE checkpoints SET note = '{}' WHERE tree_size = 10",
        resigned.note.replace('\'', "''")
    );
    app.db.execute(&sql).await.unwrap();
    assert!(
        verify(&app, &[]).status.success(),
        "trusting the key file, the swap is invisible"
    );
    expect_caught(
        &app,
        &["--public-key", &trusted],
        10,
        "not signed by a trusted key",
    );
}

async fn an_export_verifies_offline_and_tampering_in_it_is_caught(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app, 6).await;
    let note = checkpoint(&app).await["note"].as_str().unwrap().to_owned();
    let key = app.get_ok("/keys").await["keys"][0]["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = export(&app);
    // The export holds the system log too, which the checkpointer may have signed by now.
    let system = auditor::integrity::LogSigner::load(
        &app.settings.integrity.signing_key_file,
        &app.settings.integrity.log_origin,
    )
    .unwrap()
    .verifier_key(&auditor::model::TenantId::new("_system"));
    let offline = |path: &std::path::Path, extra: &[&str]| {
        let mut trusted = vec!["--public-key", system.as_str()];
        trusted.extend_from_slice(extra);
        verify_offline(path, &key, &trusted)
    };
    let ok = offline(&file, &[]);
    assert!(
        ok.status.success(),
        "{}{}",
        text(&ok.stdout),
        text(&ok.stderr)
    );
    assert!(text(&ok.stdout).contains("6 events, 1 checkpoints"));

    let content = std::fs::read_to_string(&file).unwrap();
    let changed = content.replacen("\"user_identity\":\"u1\"", "\"user_identity\":\"eve\"", 1);
    let tampered = app.db.dir.path().join("tampered.ndjson");
    std::fs::write(&tampered, changed).unwrap();
    let report = offline(&tampered, &[]);
    assert!(!report.status.success());
    assert!(
        text(&report.stdout).contains("seq 2:"),
        "{}",
        text(&report.stdout)
    );

    // The tail and the stored checkpoints cut away: only a kept checkpoint can tell.
    let truncated: String = content
        .lines()
        .filter(|l| !l.starts_with("{\"checkpoint\""))
        .take(3)
        .map(|l| format!("{l}\n"))
        .collect();
    let short = app.db.dir.path().join("short.ndjson");
    std::fs::write(&short, truncated).unwrap();
    assert!(
        offline(&short, &[]).status.success(),
        "alone, a cut export looks whole"
    );
    let kept = app.db.dir.path().join("kept.txt");
    std::fs::write(&kept, &note).unwrap();
    let report = offline(&short, &["--checkpoint", kept.to_str().unwrap()]);
    assert!(!report.status.success(), "{}", text(&report.stdout));
    assert!(
        text(&report.stdout).contains("log truncated"),
        "{}",
        text(&report.stdout)
    );
}

/// The service never records an event before the previous one. Someone with database access
/// who resets the chain head's `recorded_at` can make it (every hash still matches): `verify`
/// fails the log at that event, from the database and from an export.
async fn a_recorded_at_that_goes_backwards_is_caught(backend: Backend) {
    use auditor::model::{Limits, NewEvent, RawEvent, Submission, TenantId};
    use auditor::store::Store;
    let app = spawn_app(backend).await;
    seed(&app, 3).await;
    app.db
        .execute("UPDATE chain_heads SET recorded_at = NULL")
        .await
        .unwrap();
    let raw: RawEvent =
        serde_json::from_value(json!({"event_type": "late", "user_identity": "u"})).unwrap();
    let batch = [Submission::new(
        TenantId::default(),
        "admin",
        vec![NewEvent::parse(raw, &Limits::default()).unwrap()],
    )];
    let earlier = time::OffsetDateTime::now_utc() - time::Duration::hours(2);
    match backend {
        Backend::Sqlite => app.db.sqlite().await.append_at(&batch, earlier).await,
        Backend::Postgres => app.db.postgres().await.append_at(&batch, earlier).await,
    }
    .unwrap();
    expect_caught(&app, &[], 4, "recorded_at goes backwards");

    let file = app.db.dir.path().join("export.ndjson");
    let exported = Command::new(BIN)
        .args(["--database-url", &app.db.url, "export", "--output"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    let key = app.get_ok("/keys").await["keys"][0]["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let report = Command::new(BIN)
        .args(["verify", "--public-key", &key, "--export"])
        .arg(&file)
        .output()
        .unwrap();
    let out = text(&report.stdout);
    assert!(!report.status.success(), "{out}");
    assert!(out.contains("seq 4: recorded_at goes backwards"), "{out}");
}

/// Proofs and tiles are served from the stored tiles and the head's partial ones, so `verify`
/// compares them with the tree it recomputes: a changed tile is caught at its last leaf, a
/// changed partial tile in the head at the head, and an untouched log raises no alarm.
async fn a_changed_tile_is_caught(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app, 300).await;
    checkpoint(&app).await;
    let ok = verify(&app, &[]);
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    let (drop, zeroes) = match backend {
        Backend::Sqlite => ("DROP TRIGGER tiles_are_never_changed;", "zeroblob(8192)"),
        Backend::Postgres => (
            "DROP TRIGGER tiles_are_never_changed ON tiles;",
            "decode(repeat('00', 8192), 'hex')",
        ),
    };
    app.db.execute(drop).await.unwrap();
    app.db
        .execute(&format!(
            "UPDATE tiles SET hashes = {zeroes} WHERE level = 0 AND idx = 0"
        ))
        .await
        .unwrap();
    expect_caught(&app, &[], 256, "the stored hash tile tile/0/000 differs");
}

async fn a_changed_partial_tile_in_the_head_is_caught(backend: Backend) {
    let mut app = spawn_app(backend).await;
    seed(&app, 300).await;
    // Stopped first: its checkpointer would sign the changed head's root, which verify reports
    // as a checkpoint that differs from the log (also caught, but not what is tested here).
    app.stop().await.unwrap();
    let zero = match backend {
        Backend::Sqlite => "zeroblob(length(partial_tiles))",
        Backend::Postgres => "decode(repeat('00', length(partial_tiles)), 'hex')",
    };
    app.db
        .execute(&format!("UPDATE chain_heads SET partial_tiles = {zero}"))
        .await
        .unwrap();
    expect_caught(&app, &[], 300, "the chain head's partial tiles differ");
}

/// Each checkpoint names the one before it: a checkpoint deleted from between two others is
/// caught, at the one that names it; the latest one's deletion is a truncation (caught by a
/// kept checkpoint, see above).
async fn a_deleted_checkpoint_is_caught(backend: Backend) {
    let (app, _, first) = tamperable(backend).await;
    assert!(
        !first.contains("\npredecessor "),
        "the first names none:\n{first}"
    );
    seed(&app, 3).await;
    let second = checkpoint(&app).await["note"].as_str().unwrap().to_owned();
    let root = first.lines().nth(2).unwrap();
    assert!(
        second.contains(&format!("\npredecessor 10 {root}\n")),
        "{second}"
    );
    seed(&app, 2).await;
    checkpoint(&app).await;
    let ok = verify(&app, &[]);
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    app.db
        .execute("DELETE FROM checkpoints WHERE tree_size = 13")
        .await
        .unwrap();
    expect_caught(&app, &[], 15, "a checkpoint was deleted or replaced");
    // The auditor's own copy of it fills the gap.
    let kept = app.db.dir.path().join("kept-13.txt");
    std::fs::write(&kept, &second).unwrap();
    let with_kept = verify(&app, &["--checkpoint", kept.to_str().unwrap()]);
    assert!(with_kept.status.success(), "{}", text(&with_kept.stdout));
}

/// Several signers at once (instances sharing a database) never leave two checkpoints naming
/// the same predecessor, so verification raises no false alarm.
async fn concurrent_signers_keep_one_chain_of_checkpoints(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app, 1).await;
    for round in 0..10 {
        // Appends land while the signers read the head, so they sign different sizes.
        let writers: Vec<_> = (0..3)
            .map(|i| {
                let request = app
                    .request(Method::POST, "/events", Some(ADMIN))
                    .json(&json!({"event_type": "t", "user_identity": format!("w{round}-{i}")}));
                tokio::spawn(async move { request.send().await.unwrap().status() })
            })
            .collect();
        let signers: Vec<_> = (0..4)
            .map(|_| {
                let request = app.request(Method::POST, "/checkpoints", Some(ADMIN));
                tokio::spawn(async move { request.send().await.unwrap().status() })
            })
            .collect();
        for task in writers.into_iter().chain(signers) {
            assert!(task.await.unwrap().is_success());
        }
    }
    let ok = verify(&app, &[]);
    assert!(ok.status.success(), "{}", text(&ok.stdout));
}

/// A verification run while events are appended and checkpoints signed raises no alarm: a
/// checkpoint signed during the run covers no more than the head the run verifies up to.
async fn a_log_verified_while_it_grows_and_is_signed_raises_no_alarm(backend: Backend) {
    let app = spawn_app(backend).await;
    seed(&app, 1).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (client, address, stop) = (app.client.clone(), app.address.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                let event = json!({"event_type": "t", "user_identity": format!("w{round}")});
                let recorded = client.post(format!("{address}/events")).json(&event);
                let recorded = recorded.basic_auth(ADMIN.0, Some(ADMIN.1)).send().await;
                assert!(recorded.unwrap().status().is_success());
                let signed = client.post(format!("{address}/checkpoints"));
                let signed = signed.basic_auth(ADMIN.0, Some(ADMIN.1)).send().await;
                assert!(signed.unwrap().status().is_success());
            }
            round
        })
    };
    for _ in 0..30 {
        let run = tokio::task::block_in_place(|| verify(&app, &[]));
        assert!(
            run.status.success(),
            "a false alarm:\n{}",
            text(&run.stdout)
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        busy.await.unwrap() > 30,
        "the log hardly grew during the runs"
    );
}

crate::both_backends!(
    a_deleted_checkpoint_is_caught,
    a_log_verified_while_it_grows_and_is_signed_raises_no_alarm,
    concurrent_signers_keep_one_chain_of_checkpoints,
    a_changed_tile_is_caught,
    a_changed_partial_tile_in_the_head_is_caught,
    checkpoints_are_c2sp_signed_notes_over_the_rfc6962_root,
    inclusion_and_consistency_proofs_recompute_the_roots,
    redaction_erases_the_payload_and_the_log_still_verifies,
    a_changed_field_is_caught,
    a_changed_payload_is_caught,
    a_deleted_row_is_caught,
    swapped_rows_are_caught,
    a_truncated_tail_is_caught,
    a_forged_checkpoint_is_caught,
    a_payload_erased_without_a_redaction_record_is_caught,
    a_deleted_tenant_is_caught_by_a_kept_checkpoint,
    a_replaced_signing_key_is_caught,
    an_export_verifies_offline_and_tampering_in_it_is_caught,
    a_recorded_at_that_goes_backwards_is_caught,
);

/// Runs the standalone checker printed in `docs/integrity.md` ("A minimal independent checker")
/// on the default tenant's log, pinning `key`: through the app's API as `ADMIN`, or, with
/// `export`, offline on that file. Needs `python3` with the `cryptography` package, which
/// `scripts/test` installs when missing.
pub(crate) async fn run_documented_checker(
    app: &TestApp,
    key: &str,
    export: Option<&std::path::Path>,
) -> std::process::Output {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/integrity.md")).unwrap();
    let section = docs
        .split("## A minimal independent checker")
        .nth(1)
        .expect("the checker's section");
    let script = section
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the checker's code block");
    let file = app.db.dir.path().join("verify_log.py");
    std::fs::write(&file, script).unwrap();
    let mut checker = Command::new("python3");
    checker.arg(&file);
    match export {
        Some(path) => checker.arg("--export").arg(path).arg(key),
        None => checker.args([app.address.as_str(), ADMIN.0, ADMIN.1, key]),
    };
    // Off the test's thread: the server it talks to runs on that thread's runtime.
    tokio::task::spawn_blocking(move || checker.output().expect("python3"))
        .await
        .unwrap()
}
