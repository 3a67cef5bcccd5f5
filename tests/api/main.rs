//! Black-box tests: a real server on a random port, over a real database of its own, once on
//! SQLite and once on PostgreSQL. One binary, so it links once.
#![allow(clippy::unwrap_used)]

mod helpers;

mod access_log;
mod access_matrix;
mod amqp;
mod auth;
mod bulk;
mod capture;
mod cli;
mod client;
mod cloudevents;
mod compat;
mod deploy;
mod erasure;
mod events;
mod export;
mod fidelity;
mod filter_index;
mod idp;
mod integrity;
mod jwt;
mod lifecycle;
mod metrics;
mod nats;
mod openapi;
mod partitions;
mod postgres_tls;
mod postings;
mod query;
mod readme;
mod scale;
mod store;
mod stream;
mod tenants;
mod tiles;
mod tls;
mod tokens;
mod ui;
mod upgrade;
mod validation;
