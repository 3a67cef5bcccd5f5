//! Signed checkpoints in the transparency-log ecosystem's own formats: the text is a C2SP
//! `tlog-checkpoint` (origin, tree size, base64 root), signed as a C2SP `signed-note` with
//! Ed25519, so tools nobody here wrote (Go's `sumdb/note`, witnesses) can check it.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::model::Digest;
use crate::model::TenantId;

/// The signed-note signature algorithm byte for Ed25519.
const ED25519: u8 = 0x01;

/// A signed tree head of one tenant's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub tenant: TenantId,
    pub tree_size: u64,
    pub root: Digest,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// The complete signed note, as served by `GET /checkpoint`.
    pub note: String,
}

impl Checkpoint {
    /// The checkpoint signed before this one, as its note's extension line names it: `Some`
    /// of its tree size and root, `None` when the line is absent (the tenant's first
    /// checkpoint, or one signed before checkpoints named their predecessor).
    pub fn predecessor(&self) -> Option<(u64, Digest)> {
        let text = &self.note[..self.note.find("\n\n")? + 1];
        predecessor_line(text).ok().flatten()
    }
}

/// The extension line's keyword: `predecessor <tree size> <base64 root>`.
const PREDECESSOR: &str = "predecessor";

/// The checkpoint text: origin line, decimal tree size, base64 root hash, and, when a
/// checkpoint was signed before, the extension line naming it; each line ends in `\n`.
pub fn checkpoint_text(
    origin: &str,
    tree_size: u64,
    root: &Digest,
    predecessor: Option<(u64, Digest)>,
) -> String {
    let mut text = format!(
        "{origin}\n{tree_size}\n{}\n",
        STANDARD.encode(root.as_bytes())
    );
    if let Some((size, root)) = predecessor {
        text.push_str(&format!(
            "{PREDECESSOR} {size} {}\n",
            STANDARD.encode(root.as_bytes())
        ));
    }
    text
}

/// A `predecessor` extension line that is not `predecessor <size> <base64 root>`, or repeated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed predecessor line")]
pub struct MalformedPredecessor;

/// The predecessor a checkpoint text names: `Ok(None)` without the line.
pub fn predecessor_line(text: &str) -> Result<Option<(u64, Digest)>, MalformedPredecessor> {
    let mut found = None;
    for line in text.split('\n').skip(3) {
        let Some(rest) = line
            .strip_prefix(PREDECESSOR)
            .and_then(|r| r.strip_prefix(' '))
        else {
            continue;
        };
        let (size, root) = rest.split_once(' ').ok_or(MalformedPredecessor)?;
        let size = size.parse().map_err(|_| MalformedPredecessor)?;
        let root = STANDARD.decode(root).map_err(|_| MalformedPredecessor)?;
        let root = Digest::from_slice(&root).ok_or(MalformedPredecessor)?;
        if found.replace((size, root)).is_some() {
            return Err(MalformedPredecessor);
        }
    }
    Ok(found)
}

/// C2SP signed-note key ID: the first 4 bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let digest = Digest::sha256(&[name.as_bytes(), b"\n", &[ED25519], key.as_bytes()]);
    let mut id = [0; 4];
    id.copy_from_slice(&digest.0[..4]);
    id
}

/// The verifier key string: `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    let mut encoded = vec![ED25519];
    encoded.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, key)),
        STANDARD.encode(encoded)
    )
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing key {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write signing key {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("signing key {0} is not an Ed25519 PKCS#8 PEM private key")]
    Format(String),
    #[error("`{0}` is not a signed-note Ed25519 verifier key (<name>+<hex id>+<base64 key>)")]
    Verifier(String),
}

/// The log's Ed25519 key and origin; signs each tenant's checkpoints as `<origin>/<tenant>`.
pub struct LogSigner {
    key: SigningKey,
    origin: String,
}

impl LogSigner {
    pub fn new(key: SigningKey, origin: impl Into<String>) -> Self {
        Self {
            key,
            origin: origin.into(),
        }
    }

    /// Loads the PEM key at `path`; it must exist.
    pub fn load(path: &Path, origin: &str) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Format(shown))?;
        Ok(Self::new(key, origin))
    }

    /// Loads the PEM key at `path`, or generates one there (mode 0600, its folder made with mode
    /// 0700 if missing) when none exists yet.
    pub fn load_or_generate(path: &Path, origin: &str) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::Format(shown))?;
                Ok(Self::new(key, origin))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::from_bytes(&rand::random());
                write_private(path, &key).map_err(|source| KeyError::Write {
                    path: shown.clone(),
                    source,
                })?;
                tracing::info!(path = %shown, "generated a new checkpoint signing key");
                Ok(Self::new(key, origin))
            }
            Err(source) => Err(KeyError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// The origin line (and signed-note key name) of a tenant's log.
    pub fn origin(&self, tenant: &TenantId) -> String {
        format!("{}/{}", self.origin, tenant)
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn verifier_key(&self, tenant: &TenantId) -> String {
        verifier_key(&self.origin(tenant), &self.public_key())
    }

    /// Signs the tree head as a signed note, naming `predecessor`, the tenant's latest
    /// checkpoint (size and root), if there is one.
    pub fn sign(
        &self,
        tenant: &TenantId,
        tree_size: u64,
        root: Digest,
        issued_at: OffsetDateTime,
        predecessor: Option<(u64, Digest)>,
    ) -> Checkpoint {
        let name = self.origin(tenant);
        let text = checkpoint_text(&name, tree_size, &root, predecessor);
        let signature: Signature = self.key.sign(text.as_bytes());
        let mut blob = key_id(&name, &self.public_key()).to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        let note = format!("{text}\n\u{2014} {name} {}\n", STANDARD.encode(blob));
        Checkpoint {
            tenant: tenant.clone(),
            tree_size,
            root,
            issued_at,
            note,
        }
    }
}

fn write_private(path: &Path, key: &SigningKey) -> std::io::Result<()> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::private_file::create(path, pem.as_bytes())
}

/// A parsed verifier key.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    pub name: String,
    pub id: [u8; 4],
    pub key: VerifyingKey,
}

impl NoteVerifier {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Verifier(text.to_owned());
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let id: [u8; 4] = hex::decode(id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        let key = STANDARD.decode(key).map_err(|_| bad())?;
        let (&[ED25519], key) = key.split_at_checked(1).ok_or_else(bad)? else {
            return Err(bad());
        };
        let key: [u8; 32] = key.try_into().map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad())?;
        if key_id(name, &key) != id {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// Checks a signed note and returns its text, if this key signed it.
    pub fn open<'n>(&self, note: &'n str) -> Option<&'n str> {
        let split = note.find("\n\n")? + 1;
        let (text, signatures) = note.split_at(split);
        signatures[1..].lines().find_map(|line| {
            let rest = line.strip_prefix("\u{2014} ")?;
            let (name, blob) = rest.split_once(' ')?;
            let blob = STANDARD.decode(blob).ok()?;
            if name != self.name || blob.len() != 68 || blob[..4] != self.id {
                return None;
            }
            let signature = Signature::from_slice(&blob[4..]).ok()?;
            self.key.verify(text.as_bytes(), &signature).ok()?;
            Some(text)
        })
    }
}

/// Parses a checkpoint text into (origin, tree size, root).
pub fn parse_checkpoint_text(text: &str) -> Option<(&str, u64, Digest)> {
    let mut lines = text.split('\n');
    let origin = lines.next()?;
    let size = lines.next()?.parse().ok()?;
    let root = STANDARD.decode(lines.next()?).ok()?;
    Some((origin, size, Digest::from_slice(&root)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_gets_its_missing_folders_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/auditor/auditor.key");
        LogSigner::load_or_generate(&path, "o").unwrap();
        assert!(path.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_verifier_key_only() {
        let signer = LogSigner::new(SigningKey::from_bytes(&[7; 32]), "example.com/log");
        let tenant = TenantId::default();
        let root = Digest::sha256(&[b"root"]);
        let before = Digest::sha256(&[b"before"]);
        let checkpoint = signer.sign(
            &tenant,
            42,
            root,
            OffsetDateTime::now_utc(),
            Some((7, before)),
        );
        assert!(checkpoint.note.starts_with("example.com/log/default\n42\n"));
        assert_eq!(checkpoint.predecessor(), Some((7, before)));
        let verifier = NoteVerifier::parse(&signer.verifier_key(&tenant)).unwrap();
        let text = verifier.open(&checkpoint.note).unwrap();
        assert_eq!(
            parse_checkpoint_text(text),
            Some(("example.com/log/default", 42, root))
        );

        let forged = checkpoint.note.replace("\n42\n", "\n43\n");
        assert!(verifier.open(&forged).is_none());
        let forged = checkpoint.note.replace("predecessor 7 ", "predecessor 6 ");
        assert!(
            verifier.open(&forged).is_none(),
            "the extension line is signed"
        );
        let first = signer.sign(&tenant, 1, root, OffsetDateTime::now_utc(), None);
        assert_eq!(first.note.lines().nth(3), Some(""), "no extension line");
        assert_eq!(first.predecessor(), None);
        assert_eq!(
            predecessor_line("o\n1\nr\npredecessor x y\n"),
            Err(MalformedPredecessor)
        );
        let other = LogSigner::new(SigningKey::from_bytes(&[8; 32]), "example.com/log");
        let other_verifier = NoteVerifier::parse(&other.verifier_key(&tenant)).unwrap();
        assert!(other_verifier.open(&checkpoint.note).is_none());
    }

    #[test]
    fn a_generated_key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.key");
        let first = LogSigner::load_or_generate(&path, "o").unwrap();
        let again = LogSigner::load_or_generate(&path, "o").unwrap();
        assert_eq!(first.public_key(), again.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
