//! HTTPS for the API (`tls.cert_file`, `tls.key_file`): a client that trusts the certificate's
//! authority gets through, one that does not is refused, plain HTTP to the port fails, and a
//! certificate replaced on disk is served after SIGHUP (a file that does not load keeps the
//! current one). Certificates are made with the `openssl` command; `curl` is the client.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{ADMIN, Backend, ServerProcess, TestDb};

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().expect(program)
}

fn openssl(args: &[&str]) {
    let out = run("openssl", args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority named `name` in `dir`: its certificate and key.
fn authority(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    (cert, key)
}

/// A server certificate for `localhost` signed by `ca`, written to `cert` and `key`.
fn server_certificate(dir: &Path, ca: &(PathBuf, PathBuf), cert: &Path, key: &Path) {
    let (csr, ext) = (dir.join("server.csr"), dir.join("server.ext"));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        ca.0.to_str().unwrap(),
        "-CAkey",
        ca.1.to_str().unwrap(),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
}

/// `curl` of `url` trusting only `ca`, as `admin`: the body if the request succeeded.
fn fetch(url: &str, ca: &Path) -> Option<String> {
    let out = run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "--cacert",
            ca.to_str().unwrap(),
            "-u",
            &format!("{}:{}", ADMIN.0, ADMIN.1),
            url,
        ],
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An HTTPS connection held open by a Python client (`http.client`, keep-alive): one request
/// now, another on the same socket when asked.
struct KeptAlive {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

const KEPT_ALIVE_CLIENT: &str = r#"
import http.client, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
connection = http.client.HTTPSConnection("localhost", int(sys.argv[2]), context=context)
connection.request("GET", "/healthz")
response = connection.getresponse(); response.read()
print(response.status, flush=True)
first = connection.sock
sys.stdin.readline()
connection.request("GET", "/healthz")
response = connection.getresponse(); response.read()
print(response.status, connection.sock is first, flush=True)
"#;

impl KeptAlive {
    fn open(ca: &Path, port: &str) -> Self {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(["-c", KEPT_ALIVE_CLIENT, ca.to_str().unwrap(), port])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first answer").unwrap();
        assert_eq!(first, "200");
        Self { child, lines }
    }

    fn request_again(&mut self) -> String {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        let answer = self.lines.next().expect("a second answer").unwrap();
        let _ = self.child.wait();
        answer
    }
}

#[tokio::test]
async fn plain_http_on_a_non_loopback_address_is_warned_about() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut exposed = ServerProcess::serve_on(&db, "0.0.0.0:0", &[]);
    exposed.terminate();
    let (_, log) = exposed.wait();
    assert!(
        log.contains("serving plain HTTP on a non-loopback address"),
        "{log}"
    );
    let mut local = ServerProcess::serve(&db);
    local.terminate();
    let (_, log) = local.wait();
    assert!(!log.contains("non-loopback"), "{log}");
}

#[tokio::test]
async fn https_serves_the_configured_certificate_and_a_new_one_after_sighup() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = db.dir.path().to_owned();
    let (first_ca, second_ca) = (authority(&dir, "first-ca"), authority(&dir, "second-ca"));
    let (cert, key) = (dir.join("tls.pem"), dir.join("tls.key"));
    server_certificate(&dir, &first_ca, &cert, &key);
    let server = ServerProcess::serve_with_env(
        &db,
        &[
            ("AUDITOR_TLS__CERT_FILE", cert.to_str().unwrap()),
            ("AUDITOR_TLS__KEY_FILE", key.to_str().unwrap()),
        ],
    );
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    let https = |path: &str| format!("https://localhost:{port}{path}");

    assert!(fetch(&https("/healthz"), &first_ca.0).is_some());
    let events = fetch(&https("/events"), &first_ca.0).expect("an authenticated read");
    assert!(events.contains("\"events\""), "{events}");
    assert!(
        fetch(&https("/healthz"), &second_ca.0).is_none(),
        "an untrusted authority"
    );
    let plain = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            &format!("http://localhost:{port}/healthz"),
        ],
    );
    assert!(!plain.status.success(), "plain HTTP to the TLS port");

    // A connection opened before the reload, kept alive across it.
    let mut open = KeptAlive::open(&first_ca.0, &port);

    // A new certificate by another authority, picked up on SIGHUP.
    server_certificate(&dir, &second_ca, &cert, &key);
    let hup = run("kill", &["-HUP", &server.pid().to_string()]);
    assert!(hup.status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fetch(&https("/healthz"), &second_ca.0).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate was not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        open.request_again(),
        "200 True",
        "the connection opened before SIGHUP still answers, on the same socket"
    );
    assert!(
        fetch(&https("/healthz"), &first_ca.0).is_none(),
        "the old one is gone"
    );

    // A certificate file that does not load leaves the current one in place.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(
        run("kill", &["-HUP", &server.pid().to_string()])
            .status
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(fetch(&https("/healthz"), &second_ca.0).is_some());
}

/// `auditor events --ca-cert` trusts a private authority's certificate for the server's TLS,
/// and only that; a certificate that does not load stops the start before it is announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_trusts_the_authority_it_is_given_and_a_bad_certificate_stops_the_start() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = db.dir.path().to_owned();
    let (trusted, other) = (authority(&dir, "trusted-ca"), authority(&dir, "other-ca"));
    let (cert, key) = (dir.join("tls.pem"), dir.join("tls.key"));
    server_certificate(&dir, &trusted, &cert, &key);
    let mut server = ServerProcess::serve_with_env(
        &db,
        &[
            ("AUDITOR_TLS__CERT_FILE", cert.to_str().unwrap()),
            ("AUDITOR_TLS__KEY_FILE", key.to_str().unwrap()),
        ],
    );
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    let query = |ca: &Path| {
        Command::new(env!("CARGO_BIN_EXE_auditor"))
            .args(["events", "query", "--server"])
            .arg(format!("https://localhost:{port}"))
            .arg("--ca-cert")
            .arg(ca)
            .env_remove("AUDITOR_CONFIG")
            .env_remove("AUDITOR_TOKEN")
            .env("AUDITOR_USER", ADMIN.0)
            .env("AUDITOR_PASSWORD", ADMIN.1)
            .output()
            .unwrap()
    };
    let through = query(&trusted.0);
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    let refused = query(&other.0);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot reach"));
    server.terminate();
    server.wait();

    std::fs::write(&key, "not a key").unwrap();
    let started = Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ])
        .env_remove("AUDITOR_CONFIG")
        .env("AUDITOR_TLS__CERT_FILE", &cert)
        .env("AUDITOR_TLS__KEY_FILE", &key)
        .env("AUDITOR_ADMIN_PASSWORD", ADMIN.1)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success());
    assert!(!said.contains("auditor listening"), "{said}");
    assert!(said.contains("tls.key"), "{said}");
}
