//! The core: [`AuditLog`] records, queries, amends, redacts and checkpoints the log of the
//! caller's tenant. Every way in (the HTTP API, the seed routes, bulk NDJSON, the CLI, brokers)
//! is a thin adapter over it; none reaches past it into the writer or the store.

pub mod access_log;
mod capture_positions;
mod checkpoints;
mod erase;
pub mod export;
pub mod partition_drop;
mod read;
mod record;
pub mod retention;
mod status;
pub mod tail;
mod tiles;
pub mod writer;

use std::sync::Arc;

pub use checkpoints::{InclusionProof, IssuedCheckpoint, VerifierKey};
pub use erase::SubjectErasure;
pub use record::{Amendment, Recorded};
pub use writer::{WriteError, Writer, WriterOptions};

use crate::auth::Principal;
use crate::integrity::LogSigner;
use crate::integrity::proofs::ProofError;
use crate::model::{FieldError, Limits, QueryError, TenantId};
use crate::store::{Store, StoreError};

/// The audit log of every tenant, as one process serves it. Cheap to clone.
pub struct AuditLog<S> {
    store: S,
    writer: Writer,
    signer: Arc<LogSigner>,
    limits: Limits,
    /// Whether reads are recorded in the system log (`access_log`).
    audit_reads: bool,
}

impl<S: Clone> Clone for AuditLog<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            writer: self.writer.clone(),
            signer: Arc::clone(&self.signer),
            limits: self.limits,
            audit_reads: self.audit_reads,
        }
    }
}

/// Why the log refused or failed an operation. Adapters map each kind to their own answer
/// (`api::ApiError` to an HTTP status); the variants say what went wrong, not how to show it.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An event or one of its fields is not acceptable.
    #[error(transparent)]
    Invalid(FieldError),
    /// A query, id or tree size is not acceptable.
    #[error(transparent)]
    InvalidQuery(QueryError),
    #[error("{0}")]
    NotFound(String),
    /// The operation contradicts the log's state (e.g. redacting a redacted event).
    #[error("{0}")]
    Conflict(String),
    /// An erasure found nothing left to erase: another erasure, committed first, took it.
    /// Callers that erase answer with what that erasure left instead.
    #[error("nothing is left to erase")]
    NothingErased,
    /// The idempotency key was used before for different content.
    #[error("idempotency key `{0}` was already used for a different event")]
    IdempotencyConflict(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(#[source] anyhow::Error),
}

impl From<ProofError> for LogError {
    fn from(error: ProofError) -> Self {
        match error {
            ProofError::OutOfRange { param, message } => Self::InvalidQuery(QueryError {
                param: param.into(),
                message: format!("`{param}` {message}"),
            }),
            ProofError::MissingNode(_) => Self::Internal(error.into()),
            ProofError::Store(e) => e.into(),
        }
    }
}

impl<S: Store> AuditLog<S> {
    /// The log over `store`, appending through `writer` and signing with `signer`.
    pub fn new(store: S, writer: Writer, signer: Arc<LogSigner>, limits: Limits) -> Self {
        Self {
            store,
            writer,
            signer,
            limits,
            audit_reads: true,
        }
    }

    /// Whether reads are recorded in the system log (erasures and credential changes always
    /// are).
    pub fn audit_reads(mut self, audit: bool) -> Self {
        self.audit_reads = audit;
        self
    }

    /// The limits events are validated against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the log can take writes and the database answers (within the caller's deadline).
    pub async fn ready(&self) -> bool {
        self.writer.is_running() && self.store.ping().await.is_ok()
    }

    /// The tenant a caller acts in: the one its request named and its credential admits.
    fn tenant_of(principal: &Principal) -> TenantId {
        principal.tenant.clone()
    }
}
