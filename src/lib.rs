//! Auditor: an append-only, tamper-evident audit-log service on SQLite or PostgreSQL.
//!
//! A request enters through [`api`], is authenticated by [`auth`], validated into [`model`]
//! types, appended by the single [`writer`] (which chains it, see [`integrity`]) into a
//! [`store`], and read back through the same store.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod integrity;
pub mod model;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod writer;

pub use config::Settings;
pub use server::serve_with_listener;
