//! The README's seed examples run as written, top to bottom, on a fresh database: every curl
//! line answers 2xx (the server's address put in place of `localhost:5000`).

use std::process::Command;

use crate::helpers::{Backend, spawn_app};

/// The shell blocks of the README section headed `heading`, in order.
fn shell_blocks(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(heading).expect("the section");
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block[..block.find("```").expect("a closed block")].to_owned())
        .collect()
}

async fn the_seed_examples_run_as_written(backend: Backend) {
    let app = spawn_app(backend).await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks = shell_blocks(&readme, "## The seed examples");
    assert_eq!(blocks.len(), 2, "seed 1's block and seed 2's");
    let address = app.address.trim_start_matches("http://");
    // Every curl must succeed: a 4xx or 5xx fails the script, which stops at once.
    let script = format!(
        "set -euo pipefail\ncurl() {{ command curl --fail-with-body -sS \"$@\"; echo; }}\n{}",
        blocks.join("\n").replace("localhost:5000", address)
    );
    let output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script}\n---\n{said}");
    // The walkthrough's last answer: the erasure of the event it created.
    assert!(said.contains("\"event_type\":\"audit.erased\""), "{said}");
}

crate::both_backends!(the_seed_examples_run_as_written);
