//! `GET /events/export`: every match streamed in `seq` order; the unfiltered NDJSON verifies
//! offline; CSV is safe to open in a spreadsheet; memory stays flat on a large log.

use std::io::Write as _;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN, Backend, READER, ServerProcess, TestApp, TestDb, WRITER, spawn_app};
use crate::integrity::verify_offline;

async fn export(app: &TestApp, query: &str, who: (&str, &str)) -> reqwest::Response {
    app.get(&format!("/events/export{query}"), who).await
}

async fn ndjson(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.expect("body");
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Records `count` events in batches, user `a` for even numbers and `b` for odd ones.
async fn record_numbered(app: &TestApp, count: usize) {
    for start in (0..count).step_by(500) {
        let batch: Vec<Value> = (start..count.min(start + 500))
            .map(|i| {
                json!({
                    "event_type": "numbered",
                    "user_identity": if i % 2 == 0 { "a" } else { "b" },
                    "event_data": {"i": i},
                })
            })
            .collect();
        let response = app.post_json("/events", ADMIN, &json!(batch)).await;
        assert_eq!(response.status(), 201);
    }
}

async fn an_unfiltered_ndjson_export_is_the_verifiable_form(backend: Backend) {
    let app = spawn_app(backend).await;
    record_numbered(&app, 30).await;
    let signed = app
        .request(Method::POST, "/checkpoints", Some(ADMIN))
        .send()
        .await
        .expect("request");
    // 200 when the checkpointer, which signs new events within a second, got there first.
    assert!([200, 201].contains(&signed.status().as_u16()));
    record_numbered(&app, 5).await;

    let response = export(&app, "?format=ndjson", READER).await;
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("events-default.ndjson")
    );
    let lines = ndjson(response).await;
    // Every checkpoint (the one asked for, and any the checkpointer signed since), the chain
    // head, then the events.
    let head = lines
        .iter()
        .position(|line| line.get("chain_head").is_some())
        .expect("a chain head line");
    assert!(head >= 1 && lines[..head].iter().all(|l| l.get("checkpoint").is_some()));
    let seqs: Vec<i64> = lines[head + 1..]
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=35).collect::<Vec<_>>());

    let mut file = tempfile::NamedTempFile::new().unwrap();
    for line in &lines {
        writeln!(file, "{line}").unwrap();
    }
    let key = app.get_ok("/keys").await["keys"][0]["verifier_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let verified = verify_offline(file.path(), &key, &[]);
    let out = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "ok: tenant default: 35 events, {head} checkpoints"
        )),
        "{out}"
    );

    // Cut short at a line's end, as an interrupted download leaves it: the head says so.
    let mut cut = tempfile::NamedTempFile::new().unwrap();
    for line in &lines[..lines.len() - 2] {
        writeln!(cut, "{line}").unwrap();
    }
    let refused = verify_offline(cut.path(), &key, &[]);
    let said = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("chain head is at seq 35"), "{said}");

    // The export itself is a recorded read.
    let system = app
        .get_ok("/events?tenant=_system&event_type=audit.access&limit=1000")
        .await;
    let exports: Vec<&Value> = system["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_data"]["operation"] == "export")
        .collect();
    assert_eq!(exports.len(), 1, "{system}");
    assert_eq!(exports[0]["recorded_by"], "reader");
    assert_eq!(exports[0]["event_data"]["through_seq"], 35);
    assert_eq!(exports[0]["event_data"]["format"], "ndjson");
}

async fn a_filtered_export_streams_every_match_in_seq_order(backend: Backend) {
    let app = spawn_app(backend).await;
    // More than one page of matches (a page is 1,000).
    record_numbered(&app, 2_600).await;

    let lines = ndjson(export(&app, "?user_identity=a", READER).await).await;
    assert_eq!(lines.len(), 1_300, "events only, no preamble");
    assert!(lines.iter().all(|e| e["user_identity"] == "a"));
    let seqs: Vec<i64> = lines.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=2_600).step_by(2).collect::<Vec<_>>());

    let lines = ndjson(export(&app, "?event_data.i=7", READER).await).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["seq"], 8);

    let none = ndjson(export(&app, "?user_identity=nobody", READER).await).await;
    assert!(none.is_empty());
}

async fn a_csv_export_is_safe_to_open_in_a_spreadsheet(backend: Backend) {
    let app = spawn_app(backend).await;
    let hostile = json!([
        {"event_type": "t", "user_identity": "=HYPERLINK(\"http://evil\",\"x\")",
         "entity": "+1", "property": "-2", "source": "@SUM(A1)", "event_data": {"k": "v,\"q\"\nx"}},
        {"event_type": "t", "user_identity": "-cmd", "entity_id": "=1+1", "ip": "10.0.0.1"},
        {"event_type": "t", "user_identity": "plain"},
    ]);
    assert_eq!(
        app.post_json("/events", ADMIN, &hostile).await.status(),
        201
    );

    let response = export(&app, "?format=csv", READER).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.starts_with("id,seq,tenant,") && text.contains("\r\n"),
        "CRLF line ends"
    );
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        &rows[0][column("user_identity")],
        "'=HYPERLINK(\"http://evil\",\"x\")"
    );
    assert_eq!(&rows[0][column("entity")], "'+1");
    assert_eq!(&rows[0][column("property")], "'-2");
    assert_eq!(&rows[0][column("source")], "'@SUM(A1)");
    assert_eq!(
        &rows[0][column("event_data")],
        "{\"k\":\"v,\\\"q\\\"\\nx\"}"
    );
    // Text fields refuse control characters, so a leading tab or CR (also neutralised) cannot
    // reach a cell; the unit tests in `log::export` cover them.
    assert_eq!(&rows[1][column("user_identity")], "'-cmd");
    assert_eq!(&rows[1][column("entity_id")], "'=1+1");
    assert_eq!(&rows[1][column("ip")], "10.0.0.1");
    assert_eq!(&rows[2][column("user_identity")], "plain");
    assert_eq!(&rows[2][column("seq")], "3");
    assert_eq!(&rows[2][column("event_data")], "");
    assert!(!header.iter().any(|h| h == "salt_secret"));
}

async fn bad_export_requests_are_refused_with_the_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    for (query, param) in [
        ("?format=xml", "format"),
        ("?format=csv&format=ndjson", "format"),
        ("?limit=5", "limit"),
        ("?order=desc", "order"),
        ("?colour=red", "colour"),
        ("?since=yesterday", "since"),
    ] {
        let response = export(&app, query, READER).await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_query", "{query}: {body}");
        assert_eq!(body["error"]["field"], param, "{query}: {body}");
    }
    assert_eq!(export(&app, "", WRITER).await.status(), 403);
    let anonymous = app
        .request(Method::GET, "/events/export", None)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// The server's own memory (`RssAnon`, in KiB) now.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 100,000 events of about 1 KiB of NDJSON each: held in memory, the export would take well
/// over 100 MiB; streamed, the server holds two pages.
async fn a_large_export_streams_in_constant_memory(backend: Backend) {
    const EVENTS: usize = 100_000;
    const MAX_GROWTH_KIB: u64 = 48 * 1024;
    let db = TestDb::new(backend).await;
    let server = ServerProcess::serve(&db);
    let client = crate::helpers::http_client();
    let padding = "p".repeat(700);
    let mut body = String::new();
    for i in 0..EVENTS {
        body.push_str(
            &json!({"event_type": "bulk", "user_identity": "u", "event_data": {"i": i, "pad": padding}})
                .to_string(),
        );
        body.push('\n');
    }
    let loaded = client
        .post(format!("http://{}/events/bulk", server.address))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(loaded.status(), 200);

    let pid = server.pid();
    let before = rss_anon_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let (peak, sampling) = (peak.clone(), sampling.clone());
        move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_anon_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let mut response = client
        .get(format!(
            "http://{}/events/export?format=ndjson",
            server.address
        ))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (mut bytes, mut lines) = (0usize, 0usize);
    while let Some(chunk) = response.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "export of {EVENTS} events ({} MiB): server's own memory {} MiB before, {} MiB at peak",
        bytes >> 20,
        before >> 10,
        peak >> 10
    );
    // The chain head's line, the checkpoints signed during the load, then every event.
    assert!((EVENTS + 1..=EVENTS + 21).contains(&lines), "{lines} lines");
    assert!(bytes > 90 << 20, "{bytes} bytes");
    assert!(
        peak - before < MAX_GROWTH_KIB,
        "the export grew the server by {} MiB",
        (peak - before) >> 10
    );
}

crate::both_backends!(
    an_unfiltered_ndjson_export_is_the_verifiable_form,
    a_filtered_export_streams_every_match_in_seq_order,
    a_csv_export_is_safe_to_open_in_a_spreadsheet,
    bad_export_requests_are_refused_with_the_reason,
    a_large_export_streams_in_constant_memory,
);
