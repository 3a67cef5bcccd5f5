//! A test identity provider: signing keys made with the `openssl` command (RSA, P-256, Ed25519),
//! its JSON Web Key Set served over HTTP on a port of its own (or written to a file), keys added
//! while the service runs, and every fetch of the set counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use auditor::auth::jwt::JwtSettings;
use auditor::config::Settings;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://idp.test/realms/acme";
pub const AUDIENCE: &str = "auditor";

/// One signing key of the provider.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    key: EncodingKey,
    /// The public key in PEM, which a forger would use as an HMAC secret.
    pub public_pem: Vec<u8>,
    pub private_pem: Vec<u8>,
    jwk: Jwk,
}

type KeyFromPem = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl SigningKey {
    /// A new key for `algorithm` (RS256/PS256: RSA 2048; ES256: P-256; EdDSA: Ed25519).
    pub fn generate(kid: &str, algorithm: Algorithm) -> Self {
        let (genpkey, from_pem): (&[&str], KeyFromPem) = match algorithm {
            Algorithm::RS256 | Algorithm::PS256 => (
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                EncodingKey::from_rsa_pem,
            ),
            Algorithm::ES256 => (
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                EncodingKey::from_ec_pem,
            ),
            Algorithm::EdDSA => (&["-algorithm", "ED25519"], EncodingKey::from_ed_pem),
            other => panic!("no test key for {other:?}"),
        };
        let private_pem = openssl(&[&["genpkey"], genpkey].concat());
        let dir = tempfile::tempdir().unwrap();
        let private_file = dir.path().join("key.pem");
        std::fs::write(&private_file, &private_pem).unwrap();
        let public_pem = openssl(&["pkey", "-in", private_file.to_str().unwrap(), "-pubout"]);
        let key = from_pem(&private_pem).expect("the generated key loads");
        let mut jwk = Jwk::from_encoding_key(&key, algorithm).expect("a JWK of the key");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            algorithm,
            key,
            public_pem,
            private_pem,
            jwk,
        }
    }

    /// A JWT of `claims`, signed with this key under its `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.algorithm, &self.kid, claims)
    }

    /// A JWT of exactly these header and payload texts (which may say what a serializer would
    /// not, such as a claim twice), signed with this key.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, self.algorithm)
            .expect("sign");
        format!("{message}.{signature}")
    }

    /// This key's JWK under another `kid`, marked for encryption only (`use: enc`).
    pub fn encryption_jwk(&self, kid: &str) -> Jwk {
        let mut jwk = self.jwk.clone();
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
        jwk
    }

    /// A JWT signed with this key, its header naming `algorithm` and `kid`.
    pub fn sign_as(&self, algorithm: Algorithm, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }
}

/// The provider: its keys, and its key set served at `jwks_url`.
pub struct IdentityProvider {
    pub keys: Vec<SigningKey>,
    published: Arc<Mutex<JwkSet>>,
    fetches: Arc<AtomicUsize>,
    pub jwks_url: String,
}

impl IdentityProvider {
    /// Starts serving a key set of RS256 (`rsa`), PS256 (`pss`), ES256 (`ec`) and EdDSA (`ed`)
    /// keys.
    pub async fn start() -> Self {
        let keys = vec![
            SigningKey::generate("rsa", Algorithm::RS256),
            SigningKey::generate("pss", Algorithm::PS256),
            SigningKey::generate("ec", Algorithm::ES256),
            SigningKey::generate("ed", Algorithm::EdDSA),
        ];
        let published = Arc::new(Mutex::new(JwkSet {
            keys: keys.iter().map(|k| k.jwk.clone()).collect(),
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (set, count) = (Arc::clone(&published), Arc::clone(&fetches));
        let app = Router::new().route(
            "/jwks.json",
            get(move || {
                count.fetch_add(1, Ordering::SeqCst);
                let set = set.lock().unwrap().clone();
                async move { Json(set) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            keys,
            published,
            fetches,
            jwks_url,
        }
    }

    pub fn key(&self, kid: &str) -> &SigningKey {
        self.keys.iter().find(|k| k.kid == kid).unwrap()
    }

    /// Publishes `key` in the key set (a rotation); tokens signed with it verify from now on.
    pub fn publish(&self, key: &SigningKey) {
        self.publish_jwk(key.jwk.clone());
    }

    pub fn publish_jwk(&self, jwk: Jwk) {
        self.published.lock().unwrap().keys.push(jwk);
    }

    /// The key set as published now.
    pub fn key_set(&self) -> Value {
        serde_json::to_value(&*self.published.lock().unwrap()).unwrap()
    }

    /// How many times the key set has been fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// `[auth.jwt]` for this provider: its key set by URL, refetched at most once a second.
    pub fn configure(&self, settings: &mut Settings) {
        settings.auth.jwt = Some(JwtSettings {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_url: Some(self.jwks_url.clone()),
            jwks_file: None,
            tenant_claim: "tenant".into(),
            scope_claim: "scope".into(),
            leeway_secs: 60,
            jwks_max_age_secs: 300,
            jwks_min_refetch_secs: 1,
            login: None,
        });
    }
}

/// Claims of a valid access token for `sub` in `tenant` with `scope` (space-separated), valid
/// from a minute ago for an hour.
pub fn claims(sub: &str, tenant: &str, scope: &str) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "tenant": tenant,
        "scope": scope,
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
    })
}

/// `claims` with `changes` made: each member set, or removed when `null`.
pub fn changed(claims: &Value, changes: Value) -> Value {
    let mut claims = claims.clone();
    for (name, value) in changes.as_object().expect("changes are an object") {
        if value.is_null() {
            claims
                .as_object_mut()
                .expect("claims are an object")
                .remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// A token whose header says `alg: none`, with no signature.
pub fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"rsa"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// The classic key-confusion forgery: HS256, "signed" with the RSA public key (its PEM) as the
/// HMAC secret, under the RSA key's `kid`.
pub fn hs256_with_public_key(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(&key.public_pem).expect("an HMAC key"),
    )
    .expect("sign")
}
