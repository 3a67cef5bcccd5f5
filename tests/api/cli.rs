//! The `auditor` binary itself: its subcommands, and shutdown on SIGTERM.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Backend, ServerProcess, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_auditor");

/// Runs the `auditor` binary on `database_url` with `args`, `stdin` piped in, and waits for it.
pub(crate) fn auditor(database_url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("--database-url")
        .arg(database_url)
        .args(args)
        .env_remove("AUDITOR_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_lists_every_subcommand() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = text(&output.stdout);
    for word in [
        "serve",
        "migrate",
        "user",
        "--database-url",
        "--config",
        "AUDITOR_ADMIN_PASSWORD",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = text(&output.stdout);
    for word in ["--listen", "--migrate", "--log-format", "AUDITOR_LISTEN"] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}

#[test]
fn users_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cli.db").display());

    let early = auditor(&url, &["user", "list"], "");
    assert!(!early.status.success());
    assert!(
        text(&early.stderr).contains("auditor migrate"),
        "{}",
        text(&early.stderr)
    );

    let migrated = auditor(&url, &["migrate"], "");
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));

    let added = auditor(
        &url,
        &["user", "add", "billing", "--role", "writer"],
        "a-long-password-1\n",
    );
    assert!(added.status.success(), "{}", text(&added.stderr));
    let weak = auditor(
        &url,
        &["user", "add", "weak", "--role", "reader"],
        "short\n",
    );
    assert!(!weak.status.success());
    assert!(text(&weak.stderr).contains("at least 12"));
    let again = auditor(
        &url,
        &["user", "add", "billing", "--role", "reader"],
        "a-long-password-1\n",
    );
    assert!(text(&again.stderr).contains("already exists"));

    let in_tenant = auditor(
        &url,
        &[
            "user", "add", "acme-ops", "--role", "reader", "--tenant", "acme",
        ],
        "a-long-password-2\n",
    );
    assert!(in_tenant.status.success(), "{}", text(&in_tenant.stderr));
    let bad_tenant = auditor(
        &url,
        &["user", "add", "x", "--role", "reader", "--tenant", "ACME"],
        "a-long-password-3\n",
    );
    assert!(!bad_tenant.status.success());
    assert!(
        text(&bad_tenant.stderr).contains("is not a tenant name"),
        "{}",
        text(&bad_tenant.stderr)
    );

    let listed = auditor(&url, &["user", "list"], "");
    let list = text(&listed.stdout);
    let line = |name: &str| {
        list.lines()
            .find(|line| line.starts_with(name))
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(
        line("billing"),
        Some(vec!["billing", "writer", "*"]),
        "{list}"
    );
    assert_eq!(
        line("acme-ops"),
        Some(vec!["acme-ops", "reader", "acme"]),
        "{list}"
    );
    assert!(!list.contains("a-long-password-1"));

    let removed = auditor(&url, &["user", "remove", "billing"], "");
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    let missing = auditor(&url, &["user", "remove", "billing"], "");
    assert!(!missing.status.success());
}

/// The key's default place is beside the SQLite database, wherever the command runs; `key
/// show` reads it there and never makes one (a key made in the wrong folder would be printed,
/// trusted, and verify nothing).
#[test]
fn key_show_finds_the_key_beside_the_database_and_never_makes_one() {
    let state = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", state.path().join("auditor.db").display());
    let show = || {
        Command::new(BIN)
            .args(["--database-url", &url, "key", "show"])
            .current_dir(elsewhere.path())
            .env_remove("AUDITOR_CONFIG")
            .env_remove("AUDITOR_INTEGRITY__SIGNING_KEY_FILE")
            .output()
            .unwrap()
    };
    let missing = show();
    assert!(!missing.status.success());
    let said = text(&missing.stderr);
    assert!(said.contains("no checkpoint signing key at"), "{said}");
    assert!(
        said.contains(&state.path().join("auditor.key").display().to_string()),
        "{said}"
    );
    assert!(!state.path().join("auditor.key").exists());
    assert!(!elsewhere.path().join("auditor.key").exists());

    let signer = auditor::integrity::LogSigner::load_or_generate(
        &state.path().join("auditor.key"),
        "auditor.local/log",
    )
    .unwrap();
    let shown = show();
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let expected = signer.verifier_key(&auditor::model::TenantId::new("default"));
    assert_eq!(text(&shown.stdout).trim(), expected);
}

/// `verify` and `export` of a SQLite database that is not there say so, and make no file.
#[test]
fn verify_and_export_make_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("none.db");
    let url = format!("sqlite://{}", file.display());
    for args in [&["verify"][..], &["export", "--output", "/dev/null"]] {
        let output = auditor(&url, args, "");
        assert!(!output.status.success());
        let said = text(&output.stderr);
        assert!(said.contains("no database at"), "{said}");
        assert!(!file.exists(), "{args:?} made {}", file.display());
    }
}

/// An export with no events and no checkpoints proves nothing: `verify --export` must not
/// report it as verified.
#[test]
fn verifying_an_empty_export_fails() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("never-opened.db").display());
    let key_file = dir.path().join("auditor.key");
    auditor::integrity::LogSigner::load_or_generate(&key_file, "auditor.local/log").unwrap();
    let shown = Command::new(BIN)
        .args(["--database-url", &url, "key", "show"])
        .env_remove("AUDITOR_CONFIG")
        .env("AUDITOR_INTEGRITY__SIGNING_KEY_FILE", &key_file)
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let key = text(&shown.stdout).trim().to_owned();
    assert!(key.starts_with("auditor.local/log/default+"), "{key}");
    let system = Command::new(BIN)
        .args(["--database-url", &url, "key", "show", "--tenant", "_system"])
        .env_remove("AUDITOR_CONFIG")
        .env("AUDITOR_INTEGRITY__SIGNING_KEY_FILE", &key_file)
        .output()
        .unwrap();
    assert!(text(&system.stdout).starts_with("auditor.local/log/_system+"));
    let verify_file = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let args = [
            "verify",
            "--export",
            path.to_str().unwrap(),
            "--public-key",
            &key,
        ];
        auditor(&url, &args, "")
    };
    for (name, content) in [("empty.ndjson", ""), ("blank.ndjson", "\n  \n")] {
        let report = verify_file(name, content);
        assert_eq!(
            report.status.code(),
            Some(1),
            "{name}: {}",
            text(&report.stdout)
        );
        assert!(
            !text(&report.stdout).contains("verified"),
            "{name}: {}",
            text(&report.stdout)
        );
        assert!(
            text(&report.stderr).contains("no events and no checkpoints"),
            "{name}: {}",
            text(&report.stderr)
        );
    }
    // A line that is none of an export's: said in terms of an event, not of the parser.
    let report = verify_file("junk.ndjson", "{\"seq\": 1}\n");
    let said = text(&report.stderr);
    assert!(!report.status.success());
    assert!(said.contains("read as an event: missing field"), "{said}");
    assert!(!said.contains("untagged"), "{said}");
}

/// A database that cannot be opened is named, with the reason, not only as "unavailable".
#[test]
fn serve_says_why_the_database_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder").join("auditor.db");
    for (url, expected) in [
        (
            format!("sqlite://{}", missing.display()),
            "no-such-folder of the SQLite database does not exist".to_owned(),
        ),
        (
            "postgres://auditor:hunter2@127.0.0.1:9/audit".to_owned(),
            "cannot connect to postgres://auditor:***@127.0.0.1:9/audit".to_owned(),
        ),
    ] {
        let output = auditor(&url, &["serve", "--listen", "127.0.0.1:0"], "");
        let said = text(&output.stderr);
        assert!(!output.status.success());
        assert!(said.contains(&expected), "{said}");
        assert!(!said.contains("hunter2"), "{said}");
    }
}

#[tokio::test]
async fn serve_finishes_in_flight_requests_on_sigterm() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut server = ServerProcess::serve(&db);

    // Start a request and leave it half-sent, so it is in flight when the signal arrives.
    let body = r#"{"event_type":"a","user_identity":"u"}"#;
    let mut stream = std::net::TcpStream::connect(&server.address).unwrap();
    write!(
        stream,
        "POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46c2VjcmV0\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        &body[..10]
    )
    .unwrap();
    stream.flush().unwrap();
    // Give the server time to read the headers, so the request is in flight, not queued.
    std::thread::sleep(Duration::from_millis(300));
    server.terminate();
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(&body.as_bytes()[10..]).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let json: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["seq"], 1);

    let (status, log) = server.wait();
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    assert!(log.contains("auditor stopped"), "{log}");
    assert!(!log.contains("secret"), "no password in the logs");
}

/// `auditor export` and `auditor verify` show a progress bar on a terminal (here a pseudo-
/// terminal from `script`) and say only their result otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_verify_show_progress_on_a_terminal_only() {
    let mut app = crate::helpers::spawn_app(Backend::Sqlite).await;
    let batch: Vec<Value> = (0..500)
        .map(|i| serde_json::json!({"event_type": "t", "user_identity": format!("u{i}")}))
        .collect();
    let response = app
        .post_json("/events", crate::helpers::ADMIN, &serde_json::json!(batch))
        .await;
    assert_eq!(response.status(), 201);
    app.stop().await.unwrap();
    let url = app.db.url.clone();
    let key = app
        .settings
        .integrity
        .signing_key_file
        .display()
        .to_string();
    let output = app.db.dir.path().join("export.ndjson");
    let output = output.to_str().unwrap();
    for (args, result) in [
        // 500 and the system log's records of the export and the requests.
        (format!("export --output {output}"), "exported 50"),
        ("verify".to_owned(), "verified 50"),
    ] {
        let command = format!("{BIN} --database-url {url} {args}");
        let on_terminal = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env_remove("AUDITOR_CONFIG")
            .env("AUDITOR_INTEGRITY__SIGNING_KEY_FILE", &key)
            .output()
            .unwrap();
        let shown = text(&on_terminal.stdout);
        assert!(on_terminal.status.success(), "{shown}");
        assert!(
            shown.contains(" events, ") && shown.contains("ETA"),
            "{shown}"
        );
        assert!(shown.contains(result), "{shown}");

        let piped = Command::new(BIN)
            .args(["--database-url", &url])
            .args(args.split(' '))
            .env_remove("AUDITOR_CONFIG")
            .env("AUDITOR_INTEGRITY__SIGNING_KEY_FILE", &key)
            .output()
            .unwrap();
        assert!(piped.status.success());
        let said = format!("{}{}", text(&piped.stdout), text(&piped.stderr));
        assert!(!said.contains("ETA") && !said.contains('\r'), "{said}");
        assert!(said.contains(result), "{said}");
    }
}

/// A server whose log pipe is closed (`serve 2>&1 | head`) goes on serving, and stops cleanly on
/// SIGTERM: a log line it cannot write is lost, not a panic.
#[tokio::test]
async fn serve_outlives_a_closed_log_pipe() {
    use std::io::BufRead;
    let db = TestDb::new(Backend::Sqlite).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditor"))
        .env_remove("AUDITOR_CONFIG")
        .args(["serve", "--migrate", "--listen", "127.0.0.1:0"])
        .args(["--database-url", &db.url])
        .env(
            "AUDITOR_INTEGRITY__SIGNING_KEY_FILE",
            db.dir.path().join("auditor.key"),
        )
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "exited before listening"
        );
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    drop(log);
    let client = crate::helpers::http_client();
    for _ in 0..5 {
        let ping = client.get(format!("http://{address}/ping")).send().await;
        assert!(
            ping.unwrap().status().is_success(),
            "serving after the pipe closed"
        );
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "SIGTERM ignored");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
}

/// A stream client that stops reading holds its connection open: SIGTERM still ends the
/// server, cutting it off after the shutdown grace (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_off_a_stream_client_that_stopped_reading() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut server = ServerProcess::serve(&db);
    let client = crate::helpers::http_client();
    // Several megabytes of replay: more than the sockets' buffers hold.
    let padding = "x".repeat(400);
    let body: String = (0..20_000)
        .map(|i| {
            format!(
                "{{\"event_type\":\"t\",\"user_identity\":\"u\",\"event_data\":{{\"i\":{i},\"p\":\"{padding}\"}}}}\n"
            )
        })
        .collect();
    let loaded = client
        .post(format!("http://{}/events/bulk", server.address))
        .basic_auth(crate::helpers::ADMIN.0, Some(crate::helpers::ADMIN.1))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        loaded.status().is_success(),
        "{}",
        loaded.text().await.unwrap()
    );
    let mut stalled = std::net::TcpStream::connect(&server.address).unwrap();
    write!(
        stalled,
        "GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46c2VjcmV0\r\n\
         Last-Event-ID: 0\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 64];
    stalled.read_exact(&mut head).unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    std::thread::sleep(Duration::from_secs(2));
    server.terminate();
    let (status, log) = server.wait_within(Duration::from_secs(45));
    assert!(status.success(), "{status}");
    assert!(log.contains("cut off"), "{log}");
    drop(stalled);
}

/// Holding one tenant's key, `verify --tenant` checks that tenant's log alone; without it, the
/// other tenants' logs fail for want of their keys; a tenant named that has no log fails.
#[tokio::test]
async fn verify_checks_only_the_tenants_named() {
    let mut app = crate::helpers::spawn_app(Backend::Sqlite).await;
    for tenant in ["default", "acme"] {
        let event = serde_json::json!({"event_type": "t", "user_identity": "u"});
        let recorded = app
            .post_json(
                &format!("/events?tenant={tenant}"),
                crate::helpers::ADMIN,
                &event,
            )
            .await;
        assert_eq!(recorded.status(), 201);
        let signed = app
            .request(
                reqwest::Method::POST,
                &format!("/checkpoints?tenant={tenant}"),
                Some(crate::helpers::ADMIN),
            )
            .send()
            .await
            .unwrap();
        assert!(signed.status().is_success());
    }
    app.stop().await.unwrap();
    let run = |args: &[&str]| {
        let output = crate::helpers::with_log_key(&mut Command::new(BIN), &app)
            .args(["--database-url", &app.db.url])
            .args(args)
            .env_remove("AUDITOR_CONFIG")
            .output()
            .unwrap();
        (
            output.status.success(),
            text(&output.stdout),
            format!("{}{}", text(&output.stdout), text(&output.stderr)),
        )
    };
    let (shown, key, said) = run(&["key", "show"]);
    assert!(shown, "{said}");
    let key = key.trim();

    let (passed, _, said) = run(&["verify", "--public-key", key]);
    assert!(!passed, "{said}");
    assert!(said.contains("FAILED: tenant acme"), "{said}");

    let (passed, _, said) = run(&["verify", "--tenant", "default", "--public-key", key]);
    assert!(passed, "{said}");
    assert!(said.contains("ok: tenant default"), "{said}");
    assert!(!said.contains("tenant acme"), "{said}");

    let (passed, _, said) = run(&["verify", "--tenant", "nosuch", "--public-key", key]);
    assert!(!passed, "{said}");
    assert!(
        said.contains("FAILED: tenant nosuch: no log of this tenant was found"),
        "{said}"
    );
}
