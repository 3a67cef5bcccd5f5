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
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage the users who may call the API.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Print the default configuration file, with every key documented.
    DefaultConfig,
    /// Serve a no-op `POST /events` (parse the JSON, store nothing) as the ceiling for `bench/run`.
    #[command(hide = true)]
    BenchCeiling {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5099")]
        listen: SocketAddr,
    },
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
    },
    /// List users and their roles.
    List,
    /// Remove a user; their credentials stop working at once.
    Remove { name: String },
}
