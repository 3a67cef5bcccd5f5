//! Tamper evidence: each event's leaf hash, the per-tenant hash chain and Merkle tree over them,
//! signed checkpoints of the tree, proofs, and verification of the whole log.
//! The exact encoding is specified in `docs/integrity.md`; change both together.

mod chain;
pub mod checkpoint;
pub mod checkpointer;
pub mod commitment;
pub mod dropped;
pub mod erasure_record;
pub mod export;
pub mod merkle;
pub mod proofs;
pub mod tiles;
pub mod verify;

pub use crate::model::Digest;
pub use chain::{
    Chained, LEAF_VERSION, LeafError, chain_events, chain_hash, leaf_bytes, leaf_hash, same_request,
};
pub use checkpoint::{Checkpoint, LogSigner, NoteVerifier};
pub use merkle::Frontier;
