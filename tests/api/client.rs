//! `auditor events query|get|tail`: the command-line client against a live server, piped (so
//! it prints JSON lines).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, READER, TestApp, WRITER, spawn_app};

const BIN: &str = env!("CARGO_BIN_EXE_auditor");

fn client(app: &TestApp, who: (&str, &str)) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_remove("AUDITOR_CONFIG")
        .env_remove("AUDITOR_TOKEN")
        .env("AUDITOR_URL", &app.address)
        .env("AUDITOR_USER", who.0)
        .env("AUDITOR_PASSWORD", who.1)
        .arg("events");
    command
}

async fn run(app: &TestApp, who: (&str, &str), args: &[&str]) -> (bool, Vec<Value>, String) {
    let mut command = client(app, who);
    command.args(args);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let lines = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), lines, stderr)
}

async fn record(app: &TestApp, events: Value) -> Vec<Value> {
    let response = app.post_json("/events", WRITER, &events).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn query_and_get_print_json_lines_when_piped(backend: Backend) {
    let app = spawn_app(backend).await;
    let recorded = record(
        &app,
        json!([
            {"event_type": "billing.charged", "user_identity": "ann", "event_data": {"plan": {"tier": "gold"}}},
            {"event_type": "billing.charged", "user_identity": "bob", "event_data": {"plan": {"tier": "free"}}},
            {"event_type": "account.created", "user_identity": "ann"},
            {"event_type": "billing.charged", "user_identity": "ann", "event_data": {"plan": {"tier": "free"}}},
        ]),
    )
    .await;

    let (ok, events, stderr) = run(&app, READER, &["query", "--user-identity", "ann"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        events,
        [&recorded[0], &recorded[2], &recorded[3]].map(Clone::clone)
    );

    let (ok, events, _) = run(
        &app,
        READER,
        &[
            "query",
            "--event-type",
            "billing.charged",
            "--data",
            "plan.tier=\"free\"",
        ],
    )
    .await;
    assert!(ok);
    let seqs: Vec<&Value> = events.iter().map(|e| &e["seq"]).collect();
    assert_eq!(seqs, [&json!(2), &json!(4)]);

    // One page, then every page.
    let (_, page, _) = run(&app, READER, &["query", "--limit", "3"]).await;
    assert_eq!(page.len(), 3);
    let (_, all, _) = run(&app, READER, &["query", "--limit", "3", "--all"]).await;
    assert_eq!(all.len(), 4);
    let (_, newest, _) = run(&app, READER, &["query", "--limit", "1", "--desc"]).await;
    assert_eq!(newest[0]["seq"], 4);

    let id = recorded[1]["id"].as_str().unwrap();
    let (ok, shown, _) = run(&app, READER, &["get", id]).await;
    assert!(ok);
    assert_eq!(shown, [recorded[1].clone()]);
}

async fn refusals_are_reported_with_the_server_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    let (ok, _, stderr) = run(&app, WRITER, &["query"]).await;
    assert!(!ok);
    assert!(stderr.contains("403 forbidden"), "{stderr}");
    let (ok, _, stderr) = run(&app, ("reader", "wrong"), &["query"]).await;
    assert!(!ok);
    assert!(stderr.contains("401"), "{stderr}");
    let (ok, _, stderr) = run(&app, READER, &["query", "--since", "yesterday"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("400 invalid_query") && stderr.contains("since"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(
        &app,
        READER,
        &["get", "01a207b5-2a8f-72a0-ad9d-f7c7263305a3"],
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");

    let mut no_credentials = client(&app, READER);
    no_credentials
        .env_remove("AUDITOR_USER")
        .env_remove("AUDITOR_PASSWORD")
        .arg("query");
    let output = no_credentials.output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no credentials"));
    // Half a pair is named as such, not taken for none.
    let mut user_only = client(&app, READER);
    user_only.env_remove("AUDITOR_PASSWORD").arg("query");
    let output = user_only.output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("AUDITOR_USER is set without"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Two sets of credentials: which one is meant is not guessed.
    let mut both = client(&app, READER);
    both.env("AUDITOR_TOKEN", "aud_x").arg("query");
    let output = both.output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("both AUDITOR_TOKEN"));

    // A database is the server's business.
    let mut with_database = client(&app, READER);
    with_database.args(["query", "--database-url", "sqlite://x.db"]);
    let output = with_database.output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--database-url"));

    // Credentials in the URL are neither sent in place of the environment's nor shown.
    let with_userinfo = app.address.replace("http://", "http://admin:url-secret@");
    for server in [with_userinfo.as_str(), "http://admin:url-secret@[bad"] {
        let mut in_url = client(&app, READER);
        in_url.args(["query", "--server", server]);
        let output = in_url.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{server}");
        assert!(!stderr.contains("url-secret"), "{stderr}");
    }

    let mut unreachable = client(&app, READER);
    unreachable.args(["query", "--server", "http://127.0.0.1:9"]);
    let output = unreachable.output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach"));
}

async fn tail_prints_events_as_they_are_committed(backend: Backend) {
    let app = spawn_app(backend).await;
    record(
        &app,
        json!([{"event_type": "before", "user_identity": "ann"}]),
    )
    .await;
    let mut child = client(&app, READER)
        .args(["tail", "--user-identity", "ann"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // The tail begins with the events committed from when it connected: wait until it has.
    let mut seen = Vec::new();
    for round in 0..50 {
        record(
            &app,
            json!([
                {"event_type": "after", "user_identity": "bob"},
                {"event_type": "after", "user_identity": "ann", "event_data": {"round": round}},
            ]),
        )
        .await;
        if let Ok(line) = received.recv_timeout(Duration::from_millis(200)) {
            seen.push(serde_json::from_str::<Value>(&line).unwrap());
            break;
        }
    }
    let first = seen[0]["event_data"]["round"]
        .as_i64()
        .expect("a tailed event");
    record(
        &app,
        json!([{"event_type": "last", "user_identity": "ann"}]),
    )
    .await;
    loop {
        let line = received
            .recv_timeout(Duration::from_secs(10))
            .expect("tailed");
        let event: Value = serde_json::from_str(&line).unwrap();
        let last = event["event_type"] == "last";
        seen.push(event);
        if last {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(seen.iter().all(|e| e["user_identity"] == "ann"));
    let rounds: Vec<i64> = seen[..seen.len() - 1]
        .iter()
        .map(|e| e["event_data"]["round"].as_i64().unwrap())
        .collect();
    assert_eq!(
        rounds,
        (first..first + rounds.len() as i64).collect::<Vec<_>>()
    );
}

crate::both_backends!(
    query_and_get_print_json_lines_when_piped,
    refusals_are_reported_with_the_server_reason,
    tail_prints_events_as_they_are_committed,
);
