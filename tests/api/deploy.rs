//! `deploy/`: the systemd unit verifies, and the documented configuration is exactly what
//! `auditor default-config` prints, with every setting of the code in it.

use std::collections::BTreeSet;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_auditor");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `systemd-analyze verify` finds nothing to say of the unit (an unknown key is only a
/// warning there, so silence is what passes), and `systemd-analyze security` rates it at most
/// 2.0 of 10 ("OK").
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(format!("{ROOT}/deploy/auditor.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/auditor serve"));
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=auditor",
        // Secrets stay root's: the service gets private copies.
        "LoadCredential=auditor.toml:/etc/auditor/auditor.toml",
        "--config %d/auditor.toml",
        "AUDITOR_ADMIN_PASSWORD_FILE=%d/admin-password",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    // The binary built for this test stands in for the installed one.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auditor.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/auditor", BIN)).unwrap();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(verified.status.success(), "{said}");
    assert!(
        !said.contains("auditor.service"),
        "systemd-analyze verify has remarks: {said}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        security.status.success(),
        "{}",
        String::from_utf8_lossy(&security.stdout)
    );
}

/// Every key, set or commented out (`# key = …`), of a TOML document.
fn documented_keys(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            section = name.to_owned();
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ") {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                keys.insert(if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                });
            }
        }
    }
    keys
}

fn setting_keys(value: &toml::Value, prefix: &str, keys: &mut BTreeSet<String>) {
    if let toml::Value::Table(table) = value {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                toml::Value::Table(inner) if !inner.is_empty() => setting_keys(value, &key, keys),
                // An array of tables (`[[ingest.nats]]`): the keys of its tables.
                toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                    for item in items {
                        setting_keys(item, &key, keys);
                    }
                }
                _ => {
                    keys.insert(key);
                }
            }
        }
    }
}

#[test]
fn the_documented_configuration_is_the_default_and_names_every_setting() {
    let file = std::fs::read_to_string(format!("{ROOT}/deploy/auditor.toml")).unwrap();
    let printed = Command::new(BIN).arg("default-config").output().unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), file);

    // Every setting the code has, with its defaults and the optional ones filled in.
    let mut settings = auditor::Settings::defaults();
    settings.admin_password = Some(auditor::config::Secret::new("x"));
    settings.admin_password_file = Some("f".into());
    settings.tls.cert_file = Some("c".into());
    settings.tls.key_file = Some("k".into());
    settings.metrics.listen = Some("127.0.0.1:1".parse().unwrap());
    settings.retention.tenants.insert("default".into(), 1);
    settings.auth.jwt = Some(
        toml::from_str(
            "issuer = \"i\"\naudience = \"a\"\njwks_url = \"https://k\"\n[login]\n\
             client_id = \"c\"\nauthorization_url = \"https://a\"\ntoken_url = \"https://t\"\n\
             redirect_url = \"https://r/ui/oidc/callback\"",
        )
        .unwrap(),
    );
    settings.ingest.nats = vec![
        toml::from_str(
            "url = \"u\"\nstream = \"S\"\nconsumer = \"c\"\nsubject = \"s\"\n\
             dead_letter_subject = \"d\"",
        )
        .unwrap(),
    ];
    settings.ingest.amqp =
        vec![toml::from_str("url = \"u\"\nqueue = \"q\"\ndead_letter_queue = \"d\"").unwrap()];
    settings.capture.postgres = vec![
        toml::from_str(
            "name = \"n\"\nurl = \"postgres://h/d\"\npublication = \"p\"\nslot = \"s\"\n\
             tables = [\"public.t\"]",
        )
        .unwrap(),
    ];
    let mut code = BTreeSet::new();
    setting_keys(&toml::Value::try_from(&settings).unwrap(), "", &mut code);
    let documented = documented_keys(&file);
    // Per-tenant periods are keyed by tenant names, documented by example.
    code.retain(|key| !key.starts_with("retention.tenants."));
    let missing: Vec<&String> = code.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "settings missing from deploy/auditor.toml: {missing:?}"
    );
}
