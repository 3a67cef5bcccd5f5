//! One typed `Settings`, layered: built-in defaults (`deploy/auditor.toml`) < a TOML file <
//! `AUDITOR_*` environment variables < command-line flags; validated once at load.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::api::HttpLimits;
use crate::auth::jwt::JwtSettings;
use crate::auth::throttle::ThrottleSettings;
use crate::ingest::IngestSettings;
use crate::ingest::capture::CaptureSettings;
use crate::integrity::checkpointer::Schedule;
use crate::log::WriterOptions;
use crate::log::retention::RetentionPolicy;
use crate::model::Limits;

/// The documented defaults, embedded; `auditor default-config` prints them.
pub const DEFAULT_CONFIG: &str = include_str!("../deploy/auditor.toml");

const ENV_PREFIX: &str = "AUDITOR_";
/// `AUDITOR_*` names that are read elsewhere, not configuration keys.
/// `AUDITOR_URL`, `AUDITOR_USER`, `AUDITOR_PASSWORD` and `AUDITOR_TOKEN` are the command-line
/// client's (`auditor events`): set in the same shell, they are no typos.
const ENV_NOT_SETTINGS: [&str; 8] = [
    "config",
    // The test suite's (`scripts/test`).
    "test_database_url",
    "test_host_database_url",
    "test_run",
    "url",
    "user",
    "password",
    "token",
];
/// Keys valid in the configuration but absent from the defaults (they default to unset).
const OPTIONAL_KEYS: [&str; 19] = [
    "public_url",
    "admin_password",
    "metrics.listen",
    "admin_password_file",
    "tls.cert_file",
    "tls.key_file",
    "auth.jwt.issuer",
    "auth.jwt.audience",
    "auth.jwt.jwks_url",
    "auth.jwt.jwks_file",
    "auth.jwt.tenant_claim",
    "auth.jwt.scope_claim",
    "auth.jwt.leeway_secs",
    "auth.jwt.jwks_max_age_secs",
    "auth.jwt.jwks_min_refetch_secs",
    "auth.jwt.login.client_id",
    "auth.jwt.login.authorization_url",
    "auth.jwt.login.token_url",
    "auth.jwt.login.redirect_url",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Where people reach the service when a proxy stands in front of it
    /// (`https://audit.example.com`): the web viewer's same-site checks compare a browser's
    /// `Origin` with it (a proxy may rewrite `Host`), and an `https` one makes the session
    /// cookie `Secure` and `__Host-` prefixed (the proxy ends TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    pub database_url: DatabaseUrl,
    pub log_format: LogFormat,
    /// Whether reads are recorded in the system log (`log::access_log`).
    pub audit_reads: bool,
    #[serde(default)]
    pub admin_password: Option<Secret>,
    #[serde(default)]
    pub admin_password_file: Option<PathBuf>,
    pub limits: LimitSettings,
    pub writer: WriterSettings,
    pub auth: AuthSettings,
    pub integrity: IntegritySettings,
    pub database: DatabaseSettings,
    pub retention: RetentionSettings,
    #[serde(default)]
    pub tls: TlsSettings,
    /// Message brokers consumed inside `serve` (`[[ingest.nats]]`, `[[ingest.amqp]]`).
    #[serde(default)]
    pub ingest: IngestSettings,
    /// Host databases whose changes are captured inside `serve` (`[[capture.postgres]]`).
    #[serde(default)]
    pub capture: CaptureSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
}

/// `[metrics]`: where Prometheus scrapes `/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// A second listener serving `/metrics` alone, without credentials; when unset, `/metrics`
    /// is on the API's listener for admins of every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// `[tls]`: HTTPS for the API, with a certificate chain and its key in PEM files; both or
/// neither. The files are read again on SIGHUP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl TlsSettings {
    /// The certificate and key files, when TLS is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_file.as_deref()?, self.key_file.as_deref()?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
    pub max_field_len: usize,
    pub max_batch_events: usize,
    pub request_timeout_secs: u64,
    /// Requests per second per credential; 0 for no limit.
    pub requests_per_sec: u32,
    /// Requests a credential may make at once above that rate; 0 for as many as the rate.
    pub burst: u32,
    /// Live tails (`GET /events/stream`) one credential may hold open at once; 0 for no limit.
    pub max_streams_per_credential: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSettings {
    pub queue_capacity: usize,
    pub batch_max_events: usize,
    pub batch_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub cache_ttl_secs: u64,
    /// Failed authentications of one name from one address per window before `429`; 0 for no
    /// limit.
    pub max_failures: u32,
    pub failure_window_secs: u64,
    /// A web viewer session unused this long has ended (seconds).
    pub session_idle_secs: u64,
    /// A web viewer session ends this long after sign-in, however much it is used (seconds).
    pub session_lifetime_secs: u64,
    /// Bearer JWTs from an OAuth 2.0 / OpenID Connect identity provider; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSettings>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegritySettings {
    pub log_origin: String,
    pub signing_key_file: PathBuf,
    pub checkpoint_every_events: u64,
    pub checkpoint_interval_secs: u64,
}

/// The longest retention period accepted, in days: 10,000 years, so that the cutoff stays a
/// representable time.
const MAX_RETENTION_DAYS: u64 = 3_652_500;

/// `[retention]`: how long events keep their personal fields (see `log::retention`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days after `recorded_at`; 0 keeps events forever.
    pub max_age_days: u64,
    pub check_interval_secs: u64,
    pub batch_events: u32,
    /// Per-tenant days, overriding `max_age_days`.
    #[serde(default)]
    pub tenants: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub max_connections: u32,
}

/// Flags that override everything else; `None` leaves the lower layers' value.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    /// Said in full by [`describe`]; not a source, which would say it again.
    #[error("invalid configuration: {}", describe(.0))]
    Invalid(Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Rule(String),
}

impl From<Box<figment::Error>> for ConfigError {
    fn from(error: Box<figment::Error>) -> Self {
        Self::Invalid(error)
    }
}

impl Settings {
    /// `public_url` as a browser's `Origin` names it (`https://host[:port]`, lower case), when
    /// it is set and is one; `None` otherwise.
    pub fn public_origin(&self) -> Option<String> {
        let url = self.public_url.as_deref()?.trim_end_matches('/');
        let (scheme, authority) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
        let valid = matches!(scheme.as_str(), "http" | "https")
            && !authority.is_empty()
            && authority.chars().all(plain)
            && !authority.starts_with(':');
        valid.then(|| format!("{scheme}://{}", authority.to_ascii_lowercase()))
    }

    /// Where the checkpoint signing key is. An absolute `integrity.signing_key_file` is taken
    /// as it is; a relative one never depends on the folder the command runs in: it lies next
    /// to the SQLite database file, or on PostgreSQL in the service's state directory
    /// (`$STATE_DIRECTORY`, which systemd sets, else `$XDG_STATE_HOME/auditor`, else
    /// `~/.local/state/auditor`).
    pub fn signing_key_path(&self) -> PathBuf {
        self.state_path(&self.integrity.signing_key_file)
    }

    /// `path` as the service's own files are placed: an absolute one as it is; a relative one
    /// next to the SQLite database file, or on PostgreSQL in the state directory (see
    /// [`Settings::signing_key_path`]).
    pub fn state_path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            return path.to_path_buf();
        }
        let base = match sqlite_file(self.database_url.expose()) {
            Some(file) => file.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => state_directory(),
        };
        base.join(path)
    }

    /// The SQLite database file, when the database is SQLite.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        sqlite_file(self.database_url.expose())
    }

    /// Loads all layers from the process environment. Unknown `AUDITOR_*` variables are ignored;
    /// [`unknown_env_names`] lists them for a warning once logging is up.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_CONFIG));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let known = known_keys();
        let settings: Settings = figment
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .split("__")
                    .filter(move |key| known.contains(&key.as_str().to_ascii_lowercase())),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The built-in defaults alone, for tests and embedding.
    pub fn defaults() -> Self {
        Figment::from(Toml::string(DEFAULT_CONFIG))
            .extract()
            .unwrap_or_else(|e| panic!("the embedded default configuration is invalid: {e}"))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let rule = |ok: bool, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Rule(message.to_owned()))
            }
        };
        rule(
            self.public_url.is_none() || self.public_origin().is_some(),
            "public_url must be an origin: http:// or https://, a host and an optional port, \
             no path (e.g. https://audit.example.com)",
        )?;
        rule(
            self.limits.max_body_bytes >= 1024,
            "limits.max_body_bytes must be at least 1024",
        )?;
        rule(
            (1..=Limits::MAX_FIELD_LEN).contains(&self.limits.max_field_len),
            &format!(
                "limits.max_field_len must lie between 1 and {} bytes (PostgreSQL's index entry limit)",
                Limits::MAX_FIELD_LEN
            ),
        )?;
        rule(
            self.limits.max_batch_events >= 1,
            "limits.max_batch_events must be at least 1",
        )?;
        rule(
            self.limits.request_timeout_secs >= 1,
            "limits.request_timeout_secs must be at least 1",
        )?;
        rule(
            self.writer.queue_capacity >= 1,
            "writer.queue_capacity must be at least 1",
        )?;
        rule(
            self.writer.batch_max_events >= 1,
            "writer.batch_max_events must be at least 1",
        )?;
        rule(
            self.database.max_connections >= 1,
            "database.max_connections must be at least 1",
        )?;
        rule(
            self.integrity.checkpoint_every_events >= 1,
            "integrity.checkpoint_every_events must be at least 1",
        )?;
        rule(
            self.integrity.checkpoint_interval_secs >= 1,
            "integrity.checkpoint_interval_secs must be at least 1",
        )?;
        rule(
            !self.integrity.log_origin.is_empty()
                && !self.integrity.log_origin.contains(char::is_whitespace)
                && !self.integrity.log_origin.contains('+'),
            "integrity.log_origin must be non-empty, without spaces or `+`",
        )?;
        rule(
            self.auth.failure_window_secs >= 1,
            "auth.failure_window_secs must be at least 1",
        )?;
        rule(
            self.auth.session_idle_secs >= 1 && self.auth.session_lifetime_secs >= 1,
            "auth.session_idle_secs and auth.session_lifetime_secs must be at least 1",
        )?;
        rule(
            self.retention.check_interval_secs >= 1,
            "retention.check_interval_secs must be at least 1",
        )?;
        rule(
            std::iter::once(&self.retention.max_age_days)
                .chain(self.retention.tenants.values())
                .all(|days| *days <= MAX_RETENTION_DAYS),
            "retention periods must be at most 3652500 days (10,000 years; 0 keeps forever)",
        )?;
        rule(
            (1..=10_000).contains(&self.retention.batch_events),
            "retention.batch_events must lie between 1 and 10000",
        )?;
        // A misspelt tenant would keep its events forever (or for the default) without a word.
        for tenant in self.retention.tenants.keys() {
            crate::model::TenantId::parse(tenant)
                .map_err(|e| ConfigError::Rule(format!("retention.tenants: {e}")))?;
        }
        if let Some(metrics) = self.metrics.listen {
            rule(
                metrics.port() != self.listen.port()
                    || (!metrics.ip().is_unspecified()
                        && !self.listen.ip().is_unspecified()
                        && metrics.ip() != self.listen.ip()),
                "metrics.listen must differ from listen: it serves /metrics without credentials",
            )?;
        }
        rule(
            self.tls.cert_file.is_some() == self.tls.key_file.is_some(),
            "set both tls.cert_file and tls.key_file, or neither",
        )?;
        rule(
            self.admin_password.is_none() || self.admin_password_file.is_none(),
            "set admin_password or admin_password_file, not both",
        )?;
        self.ingest.validate().map_err(ConfigError::Rule)?;
        self.capture.validate().map_err(ConfigError::Rule)?;
        if let Some(jwt) = &self.auth.jwt {
            jwt.validate().map_err(ConfigError::Rule)?;
        }
        crate::store::Backend::of(self.database_url.expose())
            .map_err(|e| ConfigError::Rule(e.to_string()))?;
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_field_len: self.limits.max_field_len,
            max_batch_events: self.limits.max_batch_events,
        }
    }

    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_body_bytes: self.limits.max_body_bytes,
            request_timeout: Duration::from_secs(self.limits.request_timeout_secs),
        }
    }

    /// How long web viewer sessions last (`[auth] session_*`).
    pub fn session_policy(&self) -> crate::auth::sessions::SessionPolicy {
        crate::auth::sessions::SessionPolicy {
            idle: Duration::from_secs(self.auth.session_idle_secs),
            lifetime: Duration::from_secs(self.auth.session_lifetime_secs),
        }
    }

    pub fn throttle_settings(&self) -> ThrottleSettings {
        let requests_per_sec = NonZeroU32::new(self.limits.requests_per_sec);
        ThrottleSettings {
            requests_per_sec,
            burst: NonZeroU32::new(self.limits.burst)
                .or(requests_per_sec)
                .unwrap_or(NonZeroU32::MIN),
            max_failures: NonZeroU32::new(self.auth.max_failures),
            failure_window: Duration::from_secs(self.auth.failure_window_secs),
            max_streams: NonZeroU32::new(self.limits.max_streams_per_credential),
        }
    }

    pub fn checkpoint_schedule(&self) -> Schedule {
        Schedule {
            every_events: self.integrity.checkpoint_every_events,
            interval: Duration::from_secs(self.integrity.checkpoint_interval_secs),
        }
    }

    pub fn retention_policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            max_age_days: self.retention.max_age_days,
            tenants: self.retention.tenants.clone(),
            check_interval: Duration::from_secs(self.retention.check_interval_secs),
            batch_events: self.retention.batch_events,
        }
    }

    pub fn writer_options(&self) -> WriterOptions {
        WriterOptions {
            queue_capacity: self.writer.queue_capacity,
            batch_max_events: self.writer.batch_max_events,
            batch_wait: Duration::from_millis(self.writer.batch_wait_ms),
        }
    }
}

/// Dotted keys of every setting, read from the defaults so the list cannot drift.
fn known_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, table: &toml::Table, keys: &mut BTreeSet<String>) {
        for (key, value) in table {
            let dotted = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&dotted, inner, keys),
                _ => {
                    keys.insert(dotted);
                }
            }
        }
    }
    let mut keys: BTreeSet<String> = OPTIONAL_KEYS.iter().map(|k| (*k).to_owned()).collect();
    if let Ok(table) = DEFAULT_CONFIG.parse::<toml::Table>() {
        walk("", &table, &mut keys);
    }
    keys
}

/// `AUDITOR_*` variables that name no setting: probably typos, which `load` ignores.
pub fn unknown_env_names(names: impl Iterator<Item = String>) -> Vec<String> {
    let known = known_keys();
    names
        .filter_map(|name| {
            let key = name
                .strip_prefix(ENV_PREFIX)?
                .to_ascii_lowercase()
                .replace("__", ".");
            let ignored = ENV_NOT_SETTINGS.contains(&key.as_str()) || known.contains(&key);
            (!ignored).then_some(name)
        })
        .collect()
}

/// A database URL whose password never reaches a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        match rest.split_once('@') {
            Some((credentials, host)) if credentials.contains(':') => {
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            _ => self.0.clone(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A secret that prints as `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Each of figment's errors once, in words: the key (dotted, as the file or the `AUDITOR_*`
/// variable names it), where it came from, and what is wrong.
fn describe(error: &figment::Error) -> String {
    use figment::error::Kind;
    (*error)
        .clone()
        .into_iter()
        .map(|error| {
            let mut path = error.path.clone();
            if let Kind::UnknownField(field, _) = &error.kind
                && path.last() != Some(field)
            {
                path.push(field.clone());
            }
            let key = path.join(".");
            let from = error
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (in {source})"),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            let what = match &error.kind {
                Kind::UnknownField(_, expected) => {
                    format!("unknown key; valid here: {}", expected.join(", "))
                }
                Kind::MissingField(field) => format!("`{field}` is missing"),
                other => other.to_string(),
            };
            if key.is_empty() {
                format!("{what}{from}")
            } else {
                format!("`{key}`{from}: {what}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The database file of a `sqlite://` URL, made absolute against the current folder (which is
/// where the store opens it).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = Path::new(path);
    Some(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    })
}

/// The service's state directory when it has no SQLite file to keep its key beside.
fn state_directory() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("STATE_DIRECTORY") {
        // systemd may pass several, separated by `:`; the first is the service's own.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        return PathBuf::from(first);
    }
    if let Some(dir) = var("XDG_STATE_HOME") {
        return dir.join("auditor");
    }
    var("HOME")
        .map(|home| home.join(".local/state/auditor"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_is_an_origin() {
        let origin = |url: &str| {
            let mut settings = Settings::defaults();
            settings.public_url = Some(url.into());
            (settings.public_origin(), settings.validate().is_ok())
        };
        assert_eq!(
            origin("HTTPS://Audit.Example.com/"),
            (Some("https://audit.example.com".into()), true)
        );
        assert_eq!(
            origin("http://10.0.0.1:8080"),
            (Some("http://10.0.0.1:8080".into()), true)
        );
        for refused in [
            "https://audit.example.com/auditor",
            "audit.example.com",
            "ftp://audit.example.com",
            "https://",
            "https://user@audit.example.com",
        ] {
            assert_eq!(origin(refused), (None, false), "{refused}");
        }
    }

    #[test]
    fn defaults_parse_and_validate() {
        let settings = Settings::defaults();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(settings.database_url.expose(), "sqlite://auditor.db");
        settings.validate().unwrap();
    }

    #[test]
    fn a_misspelt_retention_tenant_and_metrics_on_the_api_address_are_refused() {
        let mut settings = Settings::defaults();
        settings.retention.tenants.insert("ac me".into(), 30);
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("retention.tenants"), "{error}");

        let mut settings = Settings::defaults();
        settings.metrics.listen = Some(settings.listen);
        let error = settings.validate().unwrap_err().to_string();
        assert!(error.contains("metrics.listen"), "{error}");
        settings.metrics.listen = Some("127.0.0.1:9464".parse().unwrap());
        settings.validate().unwrap();
    }

    #[test]
    fn database_password_is_redacted() {
        let url = DatabaseUrl::new("postgres://app:hunter2@db:5432/audit");
        assert_eq!(format!("{url:?}"), "postgres://app:***@db:5432/audit");
        assert!(!format!("{url}").contains("hunter2"));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "auditor.toml",
                "listen = \"127.0.0.1:7000\"\n[limits]\nmax_field_len = 10",
            )?;
            jail.set_env("AUDITOR_LIMITS__MAX_FIELD_LEN", "20");
            jail.set_env("AUDITOR_DATABASE_URL", "postgres://u@h/d");
            let settings = Settings::load(
                Some(Path::new("auditor.toml")),
                Overrides {
                    database_url: Some("sqlite://x.db".into()),
                    ..Overrides::default()
                },
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(settings.listen.port(), 7000);
            assert_eq!(settings.limits.max_field_len, 20);
            assert_eq!(settings.database_url.expose(), "sqlite://x.db");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn unknown_keys_in_a_file_are_errors_and_in_the_environment_warnings() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("auditor.toml", "[limits]\nfoo = 1")?;
            let error = Settings::load(Some(Path::new("auditor.toml")), Overrides::default())
                .unwrap_err()
                .to_string();
            // Once, by its dotted key and file, with what is valid there.
            assert!(
                error.starts_with("invalid configuration: `limits.foo` (in "),
                "{error}"
            );
            assert!(
                error.contains("unknown key; valid here: max_body_bytes"),
                "{error}"
            );
            assert_eq!(error.matches("foo").count(), 1, "{error}");
            Ok(())
        });
        let names = [
            "AUDITOR_LISTN",
            "AUDITOR_LISTEN",
            "AUDITOR_CONFIG",
            "AUDITOR_WRITER__BATCH_WAIT_MS",
            // The command-line client's, set in the same shell.
            "AUDITOR_URL",
            "AUDITOR_USER",
            "AUDITOR_PASSWORD",
            "AUDITOR_TOKEN",
        ];
        assert_eq!(
            unknown_env_names(names.iter().map(|s| s.to_string())),
            vec!["AUDITOR_LISTN".to_string()]
        );
    }
}
