//! The README's shell blocks run as written, top to bottom, on a fresh database: the seed
//! examples, then every block of the reference (all but the quick start, which builds and
//! serves). Every curl answers 2xx and every command succeeds, with the server's address put in
//! place of `localhost:5000` and the test binary as `auditor`. Usage synopses are `text` blocks.

use std::path::Path;
use std::process::Command;

use crate::helpers::{Backend, spawn_app, with_log_key};

/// The shell blocks of `readme`, in order.
fn shell_blocks(readme: &str) -> Vec<String> {
    readme
        .split("```sh\n")
        .skip(1)
        .map(|block| block[..block.find("```").expect("a closed block")].to_owned())
        .collect()
}

/// Run as the README's reader would, but stopping at the first failure: a curl answering 4xx
/// or 5xx fails. A live tail stopped by its time limit (curl's `-N -m`, `timeout`) is a success.
const PRELUDE: &str = r#"set -euo pipefail
curl() {
    local status=0
    command curl --fail-with-body -sS "$@" || status=$?
    echo
    if [ "$status" -eq 28 ] && [[ " $* " == *" -N "* ]]; then return 0; fi
    return "$status"
}
timeout() {
    local status=0
    command timeout "$@" || status=$?
    [ "$status" -eq 124 ] || return "$status"
}
"#;

async fn the_readme_runs_as_written(backend: Backend) {
    let app = spawn_app(backend).await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks = shell_blocks(&readme);
    assert!(
        blocks[0].contains("cargo run"),
        "the first block is the quick start"
    );
    let address = app.address.trim_start_matches("http://");
    let script = format!(
        "{PRELUDE}{}",
        blocks[1..]
            .join("\n")
            .replace("localhost:5000", address)
            .replace("127.0.0.1:5000", address)
    );
    let folder = tempfile::tempdir().expect("a folder for the files the blocks write");
    let binaries = Path::new(env!("CARGO_BIN_EXE_auditor"))
        .parent()
        .expect("the binary's folder");
    let path = format!(
        "{}:{}",
        binaries.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut bash = Command::new("bash");
    bash.env_clear();
    let output = with_log_key(&mut bash, &app)
        .arg("-c")
        .arg(&script)
        .current_dir(folder.path())
        .env("PATH", path)
        .env("HOME", folder.path())
        .env("AUDITOR_DATABASE_URL", &app.db.url)
        .output()
        .expect("bash");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script}\n---\n{said}");
    // Seed 2's walkthrough ends with the erasure of the event it created.
    assert!(said.contains("\"event_type\":\"audit.erased\""), "{said}");
    // The verification blocks ran to their end, and checked the default tenant's log.
    assert!(said.contains("ok: tenant default"), "{said}");
    assert!(
        !said.contains("ignoring unknown AUDITOR_"),
        "the client's variables are taken for typos: {said}"
    );
}

crate::both_backends!(the_readme_runs_as_written);
