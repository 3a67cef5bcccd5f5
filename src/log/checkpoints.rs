//! The log's proofs of itself: signed checkpoints (C2SP `tlog-checkpoint`), the verifier key,
//! and RFC 9162 inclusion and consistency proofs.

use super::access_log::Access;
use super::{AuditLog, LogError};
use crate::auth::Principal;
use crate::integrity::proofs::{self, ConsistencyProof};
use crate::integrity::{Checkpoint, checkpointer};
use crate::model::{EventId, Seq, TenantId};
use crate::store::Store;

/// A checkpoint issued on request; `created` is false when one of that size already existed.
#[derive(Debug)]
pub struct IssuedCheckpoint {
    pub checkpoint: Checkpoint,
    pub created: bool,
}

/// The key a verifier pins for a tenant's log (C2SP `signed-note` verifier key).
#[derive(Debug)]
pub struct VerifierKey {
    pub tenant: TenantId,
    /// The log's origin line, `<log_origin>/<tenant>`.
    pub origin: String,
    /// `<name>+<key id>+<base64 key>`.
    pub verifier_key: String,
    /// The raw Ed25519 public key, 32 bytes.
    pub public_key: [u8; 32],
}

/// An event's inclusion proof, with the signed checkpoint of that tree size if one was issued.
#[derive(Debug)]
pub struct InclusionProof {
    pub event_id: EventId,
    pub seq: Seq,
    pub proof: proofs::InclusionProof,
    pub checkpoint: Option<Checkpoint>,
}

impl<S: Store> AuditLog<S> {
    /// The checkpoint of `tree_size`, or the latest when `None`. `None` if none was issued.
    pub async fn checkpoint(
        &self,
        principal: &Principal,
        tree_size: Option<u64>,
    ) -> Result<Option<Checkpoint>, LogError> {
        Ok(self
            .store
            .checkpoint(&Self::tenant_of(principal), tree_size)
            .await?)
    }

    /// Signs the current tree head now. `Conflict` while the log is empty.
    pub async fn issue_checkpoint(
        &self,
        principal: &Principal,
    ) -> Result<IssuedCheckpoint, LogError> {
        let tenant = Self::tenant_of(principal);
        let before = self.store.checkpoint(&tenant, None).await?;
        let checkpoint = checkpointer::issue(&self.store, &self.signer, &tenant)
            .await?
            .ok_or_else(|| {
                LogError::Conflict("the log is empty; there is nothing to sign".into())
            })?;
        let created = before.is_none_or(|b| b.tree_size != checkpoint.tree_size);
        Ok(IssuedCheckpoint {
            checkpoint,
            created,
        })
    }

    /// The verifier key of the caller's log.
    pub fn verifier_key(&self, principal: &Principal) -> VerifierKey {
        let tenant = Self::tenant_of(principal);
        VerifierKey {
            origin: self.signer.origin(&tenant),
            verifier_key: self.signer.verifier_key(&tenant),
            public_key: self.signer.public_key().to_bytes(),
            tenant,
        }
    }

    /// Proves that event `id` is in the tree of `tree_size`; by default the latest checkpoint's
    /// size when it covers the event, else the current size. `InvalidQuery` for a size the
    /// event is not in or the log has not reached.
    pub async fn inclusion_proof(
        &self,
        principal: &Principal,
        id: EventId,
        tree_size: Option<u64>,
    ) -> Result<InclusionProof, LogError> {
        let tenant = Self::tenant_of(principal);
        let event = self.find(principal, id).await?;
        let mut details = serde_json::Map::new();
        details.insert("id".into(), id.to_string().into());
        details.insert("tree_size".into(), tree_size.into());
        self.record_access(principal, Access::read("inclusion_proof", details))
            .await?;
        let latest = self.store.checkpoint(&tenant, None).await?;
        let tree_size = match (tree_size, &latest) {
            (Some(size), _) => size,
            (None, Some(c)) if c.tree_size >= event.seq.0 as u64 => c.tree_size,
            (None, _) => proofs::current_size(&self.store, &tenant).await?,
        };
        let proof = proofs::inclusion(&self.store, &tenant, event.seq, tree_size).await?;
        let checkpoint = self.store.checkpoint(&tenant, Some(tree_size)).await?;
        Ok(InclusionProof {
            event_id: id,
            seq: event.seq,
            proof,
            checkpoint,
        })
    }

    /// Proves that the tree of size `from` is a prefix of the tree of size `to` (by default the
    /// current size).
    pub async fn consistency_proof(
        &self,
        principal: &Principal,
        from: u64,
        to: Option<u64>,
    ) -> Result<ConsistencyProof, LogError> {
        let tenant = Self::tenant_of(principal);
        let mut details = serde_json::Map::new();
        details.insert("from".into(), from.into());
        details.insert("to".into(), to.into());
        self.record_access(principal, Access::read("consistency_proof", details))
            .await?;
        let to = match to {
            Some(to) => to,
            None => proofs::current_size(&self.store, &tenant).await?,
        };
        Ok(proofs::consistency(&self.store, &tenant, from, to).await?)
    }
}
