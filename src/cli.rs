//! Command-line definitions.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::auth::Role;
use crate::config::LogFormat;

/// Auditor: an append-only, tamper-evident audit log with an HTTP JSON API.
#[derive(Debug, Parser)]
#[command(
    name = "auditor",
    version,
    propagate_version = true,
    after_help = "Environment:\n  \
        AUDITOR_ADMIN_PASSWORD  password of the first admin, created when the database has no users\n  \
        AUDITOR_<KEY>           any configuration key (AUDITOR_LIMITS__MAX_BODY_BYTES for [limits] max_body_bytes)\n  \
        RUST_LOG                log filter, e.g. info or auditor=debug\n\n\
        Quick start: AUDITOR_ADMIN_PASSWORD=... auditor serve --migrate"
)]
pub struct Cli {
    /// Configuration file (TOML); see `auditor default-config` for every key.
    #[arg(long, global = true, env = "AUDITOR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Database to use: sqlite://path/to/file.db or postgres://user:password@host/database
    /// (env AUDITOR_DATABASE_URL) [default: sqlite://auditor.db]
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve {
        /// Address to listen on (env AUDITOR_LISTEN) [default: 127.0.0.1:5000]
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Apply pending database migrations before serving.
        #[arg(long)]
        migrate: bool,
        /// Log format (env AUDITOR_LOG_FORMAT) [default: text]
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Serve HTTPS with this certificate chain (PEM; env AUDITOR_TLS__CERT_FILE); reread
        /// on SIGHUP.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM; env AUDITOR_TLS__KEY_FILE).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage the users who may call the API.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Query, show or follow the events of a running server, over its HTTP API
    /// (AUDITOR_URL; credentials from AUDITOR_TOKEN, or AUDITOR_USER and AUDITOR_PASSWORD).
    Events {
        #[command(subcommand)]
        command: crate::client::EventsCommand,
    },
    /// Manage API tokens, the credentials of services (`Authorization: Bearer <token>`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Verify the whole log: every payload hash, leaf, chain link and signed checkpoint.
    /// Reports the first bad `seq` of each tenant and exits non-zero if anything is wrong.
    Verify {
        /// Trusted checkpoint key, as `GET /keys` or `auditor key show` print it
        /// (<name>+<id>+<key>); repeat for several tenants. Default: the configured key file.
        #[arg(long = "public-key", value_name = "KEY")]
        public_keys: Vec<String>,
        /// A signed checkpoint saved earlier (the text of `GET /checkpoint`); the log must
        /// still contain the tree it signs, which catches a truncated tail. Repeatable.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// Verify an NDJSON export (from `auditor export`) instead of the database.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        /// Verify only this tenant's log (repeatable), e.g. the one whose key you pinned.
        /// Default: every tenant's, each needing its trusted key.
        #[arg(long = "tenant", value_name = "TENANT")]
        tenants: Vec<String>,
    },
    /// Write the whole log (checkpoints and events with every hashed field) as NDJSON.
    Export {
        /// Output file [default: standard output]
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// The checkpoint signing key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Print the default configuration file, with every key documented.
    DefaultConfig,
    /// Run the configured change captures (`[[capture.postgres]]`) without the HTTP server,
    /// until SIGTERM or SIGINT.
    Capture,
    /// Serve a no-op `POST /events` (parse the JSON, store nothing) as the ceiling for `bench/run`.
    #[command(hide = true)]
    BenchCeiling {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5099")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the verifier key of a tenant's log (signed-note form), from the key the server
    /// made at its first start; never makes one.
    Show {
        /// The tenant whose log the key names (`_system` for the system log).
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token. It is printed once, alone on the last line of standard output; only its
    /// SHA-256 is stored.
    Create {
        /// Its name: letters, digits, `_`, `-`, `.` and `@`; events it records name it as
        /// `recorded_by` `token:NAME`.
        #[arg(long)]
        name: String,
        /// The tenant it acts in, or `*` for every tenant.
        #[arg(long)]
        tenant: String,
        /// Comma-separated: events:write, events:read, events:redact, checkpoints:write, admin.
        #[arg(long)]
        scopes: String,
        /// Lifetime such as 90d, 12h, 30m or 3600s; without it the token lasts until revoked.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token: it stops working at once, on every instance.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user. The password is read from standard input when it is not a terminal
    /// (`echo "$PW" | auditor user add NAME --role writer`), and prompted for otherwise.
    Add {
        /// Login name: letters, digits, `_`, `-`, `.` and `@`.
        name: String,
        /// reader: may only query; writer: may only record; admin: everything.
        #[arg(long, value_enum)]
        role: Role,
        /// The tenant the user acts in (1 to 64 of `a-z`, `0-9`, `.`, `_`, `-`), or `*` for
        /// every tenant (naming one per request with `?tenant=`).
        #[arg(long, default_value = "*")]
        tenant: String,
    },
    /// List users, their roles and tenants.
    List,
    /// Remove a user; their credentials stop working at once.
    Remove { name: String },
}
