//! OAuth 2.0 / OpenID Connect bearer JWTs (RFC 7519; RFC 9068's access-token claims), checked
//! against the identity provider's JSON Web Key Set (RFC 7517). The key set is read at start,
//! cached, read again when it is older than `jwks_max_age_secs`, and read again at once when a
//! token names a `kid` it lacks, at most once per `jwks_min_refetch_secs`, so that a flood of
//! forged `kid`s cannot turn the service into a load on the provider.
//!
//! Only asymmetric signatures are accepted (RS*, PS*, ES256/ES384, EdDSA), with the key whose
//! `kid` the token names, of the family its `alg` belongs to: `alg: none` and HS* (among them
//! HS256 "signed" with the public key as its secret) never verify.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};

use super::Credential;
use crate::model::{Scope, Scopes, TenantScope};

/// `[auth.jwt]`: whose tokens are accepted and where their keys are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The `iss` every token must carry, exactly.
    pub issuer: String,
    /// The `aud` every token must carry (one of its values when it is an array).
    pub audience: String,
    /// Where the key set is fetched (`https://…/jwks.json`); or use `jwks_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A key set on disk, read at start and again on an unknown `kid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The claim naming the tenant the caller belongs to: a tenant name, or `*` for all.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The claim holding the scopes: space-separated (RFC 9068) or an array of names.
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Seconds a fetched key set is used before it is fetched again.
    #[serde(default = "default_jwks_max_age_secs")]
    pub jwks_max_age_secs: u64,
    /// The shortest time, in seconds, between two fetches caused by unknown `kid`s.
    #[serde(default = "default_jwks_min_refetch_secs")]
    pub jwks_min_refetch_secs: u64,
    /// Signing in to the web viewer through this provider; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<super::oidc::OidcLogin>,
}

/// The most clock skew `leeway_secs` may allow.
const MAX_LEEWAY_SECS: u64 = 600;

/// The longest `sub` accepted, in bytes (OpenID Connect Core 1.0, 2: at most 255 ASCII
/// characters).
const MAX_SUBJECT_BYTES: usize = 255;

/// Prefixes of the names the service gives its other callers (`token:billing`, `cli:root`,
/// `nats:auditor`, `amqp:audit`, `capture:app`, `auditor-retention`): a JWT's `sub` may not pose as one.
const RESERVED_SUBJECT_PREFIXES: [&str; 6] =
    ["token:", "cli:", "nats:", "amqp:", "capture:", "auditor-"];

fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_scope_claim() -> String {
    "scope".into()
}
fn default_leeway_secs() -> u64 {
    60
}
fn default_jwks_max_age_secs() -> u64 {
    300
}
fn default_jwks_min_refetch_secs() -> u64 {
    10
}

impl JwtSettings {
    /// The settings' own rules, checked when the configuration is loaded.
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err("auth.jwt.issuer and auth.jwt.audience must not be empty".into());
        }
        match (&self.jwks_url, &self.jwks_file) {
            (Some(url), None) if url.starts_with("https://") || url.starts_with("http://") => {}
            (Some(_), None) => return Err("auth.jwt.jwks_url must be an http(s) URL".into()),
            (None, Some(_)) => {}
            _ => return Err("set one of auth.jwt.jwks_url and auth.jwt.jwks_file".into()),
        }
        if self.tenant_claim.is_empty() || self.scope_claim.is_empty() {
            return Err("auth.jwt.tenant_claim and auth.jwt.scope_claim must not be empty".into());
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(format!(
                "auth.jwt.leeway_secs must be at most {MAX_LEEWAY_SECS}: more would make `exp` \
                 meaningless"
            ));
        }
        if let Some(login) = &self.login {
            login.validate()?;
        }
        if self.jwks_min_refetch_secs == 0 || self.jwks_max_age_secs == 0 {
            return Err(
                "auth.jwt.jwks_min_refetch_secs and auth.jwt.jwks_max_age_secs must be at least \
                 1, or forged `kid`s would each fetch the key set"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Why a bearer JWT was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    #[error("the token names no `kid`")]
    NoKeyId,
    #[error("no key `{0}` in the identity provider's key set")]
    UnknownKey(String),
    #[error("key `{0}` does not sign with the token's algorithm")]
    KeyMismatch(String),
    #[error("{}", rejection(.0))]
    Rejected(jsonwebtoken::errors::Error),
    #[error("claim `{0}` {1}")]
    Claim(String, &'static str),
    /// The key set could not be read, so the token's key is not known: the provider's fault,
    /// not the caller's. Worth trying again after the wait.
    #[error("the identity provider's key set could not be read: {0}")]
    KeysUnavailable(String, Duration),
}

/// What a failed validation means, in the caller's terms.
fn rejection(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer (`iss`) is not the configured one".into(),
        ErrorKind::InvalidAudience => "the token is not meant for this service (`aud`)".into(),
        ErrorKind::InvalidSignature => "the signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("claim `{claim}` is missing"),
        _ => format!("the token is invalid: {error}"),
    }
}

/// The asymmetric algorithms accepted; every one verifies with a public key from the key set.
const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A key of the set, ready to verify.
struct VerifyingKey {
    key: DecodingKey,
    /// The `alg` the set pins the key to, if it names one.
    algorithm: Option<Algorithm>,
    /// An elliptic-curve key's curve, which decides the one ECDSA algorithm it verifies.
    curve: Option<EllipticCurve>,
}

impl VerifyingKey {
    /// The key, unless the set marks it for something other than verifying signatures (`use`
    /// other than `sig`, `key_ops` without `verify`) or it cannot be read.
    fn from_jwk(jwk: &Jwk) -> Option<Self> {
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|usage| *usage != PublicKeyUse::Signature)
        {
            return None;
        }
        if jwk
            .common
            .key_operations
            .as_ref()
            .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
        {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        let algorithm = match jwk.common.key_algorithm {
            Some(named) => Some(Algorithm::try_from(named).ok()?),
            None => None,
        };
        let curve = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(params) => Some(params.curve.clone()),
            AlgorithmParameters::OctetKeyPair(params) => Some(params.curve.clone()),
            _ => None,
        };
        Some(Self {
            key,
            algorithm,
            curve,
        })
    }

    fn signs_with(&self, algorithm: Algorithm) -> bool {
        let curve_fits = match algorithm {
            Algorithm::ES256 => self.curve == Some(EllipticCurve::P256),
            Algorithm::ES384 => self.curve == Some(EllipticCurve::P384),
            Algorithm::EdDSA => self.curve == Some(EllipticCurve::Ed25519),
            _ => true,
        };
        curve_fits
            && self.key.family().algorithms().contains(&algorithm)
            && self.algorithm.is_none_or(|pinned| pinned == algorithm)
    }
}

#[derive(Default)]
struct KeySet {
    /// The keys by `kid`; a set may give one `kid` to keys of several kinds.
    keys: HashMap<String, Vec<VerifyingKey>>,
    fetched_at: Option<Instant>,
    /// Why the last fetch failed, while it did.
    failure: Option<String>,
}

enum KeySource {
    Url {
        client: reqwest::Client,
        url: String,
    },
    File(PathBuf),
}

impl KeySource {
    async fn read(&self) -> Result<JwkSet, String> {
        match self {
            Self::Url { client, url } => {
                let response = client
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| format!("{url}: {e}"))?;
                response.json().await.map_err(|e| format!("{url}: {e}"))
            }
            Self::File(path) => {
                let text = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

/// Verifies bearer JWTs against one issuer's key set.
pub struct JwtVerifier {
    settings: JwtSettings,
    source: KeySource,
    keys: RwLock<KeySet>,
    /// Held while the key set is fetched again, so that one fetch serves every waiting request;
    /// holds when the last such fetch started.
    refetch: Mutex<Option<Instant>>,
}

/// How long one fetch of the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl JwtVerifier {
    /// A verifier for `settings`, with the key set read once. A provider that cannot be reached
    /// yet is logged and tried again on the first token; a key set file that cannot be read is
    /// the error.
    pub async fn new(settings: JwtSettings) -> Result<Self, String> {
        let source = match (&settings.jwks_url, &settings.jwks_file) {
            (Some(url), _) => {
                let loopback = reqwest::Url::parse(url).ok().is_some_and(|url| {
                    matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
                });
                if url.starts_with("http://") && !loopback {
                    tracing::warn!(
                        jwks_url = %url,
                        "the key set is fetched over plain HTTP: whoever sits on the path can \
                         sign tokens this service accepts; use https://"
                    );
                }
                crate::tls::install_crypto_provider();
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| format!("the HTTP client for the key set: {e}"))?;
                KeySource::Url {
                    client,
                    url: url.clone(),
                }
            }
            (None, Some(path)) => KeySource::File(path.clone()),
            (None, None) => return Err("set auth.jwt.jwks_url or auth.jwt.jwks_file".into()),
        };
        let verifier = Self {
            settings,
            source,
            keys: RwLock::new(KeySet::default()),
            refetch: Mutex::new(None),
        };
        match verifier.fetch().await {
            Ok(count) => tracing::info!(keys = count, "read the identity provider's key set"),
            Err(error) if matches!(verifier.source, KeySource::Url { .. }) => {
                tracing::warn!(%error, "could not read the identity provider's key set yet");
            }
            Err(error) => return Err(error),
        }
        Ok(verifier)
    }

    /// Reads the key set and replaces the cached one; the number of usable keys. A failure
    /// keeps the cached keys and is remembered.
    async fn fetch(&self) -> Result<usize, String> {
        let set = match self.source.read().await {
            Ok(set) => set,
            Err(error) => {
                self.keys.write().await.failure = Some(error.clone());
                return Err(error);
            }
        };
        let mut keys: HashMap<String, Vec<VerifyingKey>> = HashMap::new();
        let mut count = 0;
        for jwk in &set.keys {
            if let (Some(kid), Some(key)) = (&jwk.common.key_id, VerifyingKey::from_jwk(jwk)) {
                keys.entry(kid.clone()).or_default().push(key);
                count += 1;
            }
        }
        *self.keys.write().await = KeySet {
            keys,
            fetched_at: Some(Instant::now()),
            failure: None,
        };
        Ok(count)
    }

    /// The caller a token names, once its signature, issuer, audience and lifetime hold.
    /// `recorded_by` is its `sub`.
    pub async fn verify(&self, token: &str) -> Result<Credential, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(JwtError::Malformed)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(JwtError::Algorithm(header.alg));
        }
        let kid = header.kid.ok_or(JwtError::NoKeyId)?;
        refuse_repeated_claims(token)?;
        self.refresh(&kid).await;
        let keys = self.keys.read().await;
        let Some(candidates) = keys.keys.get(&kid) else {
            return Err(match &keys.failure {
                Some(failure) => JwtError::KeysUnavailable(
                    failure.clone(),
                    Duration::from_secs(self.settings.jwks_min_refetch_secs),
                ),
                None => JwtError::UnknownKey(kid),
            });
        };
        let key = candidates
            .iter()
            .find(|key| key.signs_with(header.alg))
            .ok_or_else(|| JwtError::KeyMismatch(kid.clone()))?;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            token,
            &key.key,
            &self.validation(header.alg),
        )
        .map_err(JwtError::Rejected)?
        .claims;
        self.credential(&claims)
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_secs;
        validation
    }

    fn credential(&self, claims: &serde_json::Map<String, Value>) -> Result<Credential, JwtError> {
        if !matches!(claims.get("iss"), Some(Value::String(_))) {
            return Err(JwtError::Claim("iss".into(), "must be one string"));
        }
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) => sub.clone(),
            _ => return Err(JwtError::Claim("sub".into(), "must be a string")),
        };
        if subject.trim().is_empty() || subject.chars().any(char::is_control) {
            return Err(JwtError::Claim(
                "sub".into(),
                "must hold a name: not blank, no control characters",
            ));
        }
        if subject.len() > MAX_SUBJECT_BYTES {
            return Err(JwtError::Claim("sub".into(), "is longer than 255 bytes"));
        }
        if RESERVED_SUBJECT_PREFIXES
            .iter()
            .any(|prefix| subject.starts_with(prefix))
        {
            return Err(JwtError::Claim(
                "sub".into(),
                "poses as one of the service's own callers (`token:`, `cli:`, `nats:`, `amqp:`, \
                 `capture:`, `auditor-`)",
            ));
        }
        let tenant_claim = &self.settings.tenant_claim;
        let tenants = match claims.get(tenant_claim) {
            Some(Value::String(name)) => TenantScope::parse(name)
                .map_err(|_| JwtError::Claim(tenant_claim.clone(), "is not a tenant name"))?,
            Some(_) => return Err(JwtError::Claim(tenant_claim.clone(), "must be a string")),
            None => return Err(JwtError::Claim(tenant_claim.clone(), "is missing")),
        };
        // Scopes this service does not define (`openid`, `profile`, another API's) are ignored.
        let names: Vec<&str> = match claims.get(&self.settings.scope_claim) {
            Some(Value::String(text)) => text.split_whitespace().collect(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        Ok(Credential {
            name: subject,
            scopes: names
                .into_iter()
                .filter_map(Scope::parse)
                .collect::<Scopes>(),
            tenants,
        })
    }

    /// Reads the key set again when it is older than `jwks_max_age_secs` or lacks `kid`, unless
    /// a fetch started less than `jwks_min_refetch_secs` ago. A failed fetch keeps the cached
    /// keys, and is remembered in the set.
    async fn refresh(&self, kid: &str) {
        let max_age = Duration::from_secs(self.settings.jwks_max_age_secs);
        let wanted = |keys: &KeySet| {
            !keys.keys.contains_key(kid) || keys.fetched_at.is_none_or(|at| at.elapsed() >= max_age)
        };
        if !wanted(&*self.keys.read().await) {
            return;
        }
        let mut last = self.refetch.lock().await;
        let interval = Duration::from_secs(self.settings.jwks_min_refetch_secs);
        // Whoever held the lock before may have fetched what this request needs.
        if !wanted(&*self.keys.read().await) || last.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(error) = self.fetch().await {
            tracing::warn!(%error, "could not refresh the identity provider's key set");
        }
    }
}

/// Refuses a payload that names a claim twice: JSON parsers disagree on which one counts, and
/// the provider meant only one.
fn refuse_repeated_claims(token: &str) -> Result<(), JwtError> {
    use base64::Engine;
    let Some(payload) = token.split('.').nth(1) else {
        return Ok(());
    };
    // An undecodable payload is refused by the validation that follows, with its own reason.
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return Ok(());
    };
    let Ok(crate::model::payload::Members(members)) = serde_json::from_slice(&bytes) else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    for (name, _) in members {
        if !seen.insert(name.clone()) {
            return Err(JwtError::Claim(name, "appears twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> JwtSettings {
        JwtSettings {
            issuer: "https://idp.test/".into(),
            audience: "auditor".into(),
            jwks_url: Some("https://idp.test/jwks.json".into()),
            jwks_file: None,
            tenant_claim: default_tenant_claim(),
            scope_claim: default_scope_claim(),
            leeway_secs: default_leeway_secs(),
            jwks_max_age_secs: default_jwks_max_age_secs(),
            jwks_min_refetch_secs: default_jwks_min_refetch_secs(),
            login: None,
        }
    }

    #[test]
    fn settings_name_one_key_set_of_a_url_or_a_file() {
        assert!(settings().validate().is_ok());
        let both = JwtSettings {
            jwks_file: Some("/etc/jwks.json".into()),
            ..settings()
        };
        assert!(both.validate().is_err());
        let neither = JwtSettings {
            jwks_url: None,
            ..settings()
        };
        assert!(neither.validate().is_err());
        let not_http = JwtSettings {
            jwks_url: Some("file:///etc/jwks.json".into()),
            ..settings()
        };
        assert!(not_http.validate().is_err());
        let no_audience = JwtSettings {
            audience: String::new(),
            ..settings()
        };
        assert!(no_audience.validate().is_err());
        let lax = JwtSettings {
            leeway_secs: 601,
            ..settings()
        };
        assert!(
            lax.validate().is_err(),
            "a leeway that makes exp meaningless"
        );
        let eager = JwtSettings {
            jwks_min_refetch_secs: 0,
            ..settings()
        };
        assert!(eager.validate().is_err(), "every forged kid would fetch");
    }

    async fn verifier() -> JwtVerifier {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, r#"{"keys":[]}"#).unwrap_or_else(|e| panic!("{e}"));
        JwtVerifier::new(JwtSettings {
            jwks_url: None,
            jwks_file: Some(file),
            ..settings()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `value`'s claims, with the `iss` that `decode` has checked already.
    fn claims(value: Value) -> serde_json::Map<String, Value> {
        let mut claims = value.as_object().cloned().unwrap_or_default();
        claims.insert("iss".into(), "https://idp.test/".into());
        claims
    }

    #[tokio::test]
    async fn scopes_come_as_a_string_or_an_array_and_unknown_ones_are_ignored() {
        let verifier = verifier().await;
        let spaced = verifier
            .credential(&claims(serde_json::json!({
                "sub": "a", "tenant": "acme", "scope": "openid events:read  admin"
            })))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spaced.scopes.to_string(), "events:read admin");
        assert_eq!(
            spaced.tenants,
            TenantScope::parse("acme").unwrap_or(TenantScope::All)
        );
        let listed = verifier
            .credential(&claims(serde_json::json!({
                "sub": "a", "tenant": "*", "scope": ["events:write", "profile", 7]
            })))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed.scopes.to_string(), "events:write");
        assert_eq!(listed.tenants, TenantScope::All);
        let none = verifier
            .credential(&claims(serde_json::json!({"sub": "a", "tenant": "acme"})))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(none.scopes.is_empty());
    }

    #[tokio::test]
    async fn a_tenant_and_a_subject_are_required() {
        let verifier = verifier().await;
        for refused in [
            serde_json::json!({"sub": "a"}),
            serde_json::json!({"sub": "a", "tenant": 7}),
            serde_json::json!({"sub": "a", "tenant": "Not A Tenant"}),
            serde_json::json!({"sub": "a", "tenant": "_system"}),
            serde_json::json!({"tenant": "acme"}),
            serde_json::json!({"sub": "", "tenant": "acme"}),
            serde_json::json!({"sub": "a\u{0}b", "tenant": "acme"}),
        ] {
            assert!(
                verifier.credential(&claims(refused.clone())).is_err(),
                "{refused}"
            );
        }
    }
}
