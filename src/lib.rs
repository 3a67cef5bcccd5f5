//! Auditor: an append-only, tamper-evident audit-log service on SQLite or PostgreSQL.
//!
//! A request enters through an adapter ([`api`] for HTTP, the CLI in `main`), is authenticated
//! by [`auth`], and becomes a call on the core, [`log::AuditLog`]: it validates [`model`] types,
//! appends through the single writer (which chains them, see [`integrity`]) into a [`store`],
//! and reads back through the same store.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod ingest;
pub mod integrity;
pub mod log;
pub mod metrics;
pub mod model;
pub mod private_file;
pub mod progress;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use config::Settings;
pub use server::serve_with_listener;
