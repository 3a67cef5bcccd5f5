//! Tamper evidence: every event's leaf hash and the per-tenant hash chain over them.
//! The exact encoding is specified in `docs/integrity.md`; change both together.

mod chain;
mod digest;

pub use chain::{Chained, chain_events, chain_hash, leaf_hash};
pub use digest::Digest;
