//! Tamper evidence: every event's leaf hash and the per-tenant hash chain over them.
//! The exact encoding is specified in `docs/integrity.md`; change both together.

mod chain;
pub mod checkpoint;
mod digest;
pub mod merkle;

pub use chain::{Chained, chain_events, chain_hash, leaf_hash};
pub use checkpoint::{Checkpoint, LogSigner, NoteVerifier};
pub use digest::Digest;
pub use merkle::Frontier;
