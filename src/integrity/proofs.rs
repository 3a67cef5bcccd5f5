//! Inclusion and consistency proofs from the stored tree: each names O(log n) complete
//! subtrees, hashed from the few tiles below them (fetched in one store call, after the head
//! that holds the partial ones), so a proof on a huge log costs a handful of lookups.

use std::collections::HashMap;

use serde::Serialize;

use super::merkle::{Frontier, NodeId, Span, consistency_spans, inclusion_spans};
use super::tiles::{TileId, node_in_tile};
use crate::model::Digest;
use crate::model::{Seq, TenantId};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("{message}")]
    OutOfRange {
        param: &'static str,
        message: String,
    },
    #[error("the stored Merkle tree is missing node {0:?}")]
    MissingNode(NodeId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An RFC 9162 inclusion proof for one event.
#[derive(Debug, Clone, Serialize)]
pub struct InclusionProof {
    /// Zero-based position of the leaf: `seq - 1`.
    pub leaf_index: u64,
    pub tree_size: u64,
    pub leaf_hash: Digest,
    pub root: Digest,
    pub proof: Vec<Digest>,
}

/// An RFC 9162 consistency proof between two tree sizes.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub from_root: Digest,
    pub to_root: Digest,
    pub proof: Vec<Digest>,
}

/// The size of a tenant's tree now.
pub async fn current_size<S: Store>(store: &S, tenant: &TenantId) -> Result<u64, StoreError> {
    Ok(current(store, tenant).await?.size())
}

/// The right edge of a tenant's tree now (empty before its first event).
async fn current<S: Store>(store: &S, tenant: &TenantId) -> Result<Frontier, StoreError> {
    Ok(store
        .head(tenant)
        .await?
        .map(|head| head.frontier)
        .unwrap_or_default())
}

/// The named hash tiles as far as the tree whose right edge is `frontier` has them: full ones
/// from their rows, partial ones from `frontier`; a tile not begun is left out. `frontier` must
/// have been read before this call: a tile that was partial then may be full by now, never the
/// other way round, and a full tile begins with every hash its partial form had.
pub async fn tiles<S: Store>(
    store: &S,
    tenant: &TenantId,
    frontier: &Frontier,
    ids: &[TileId],
) -> Result<HashMap<TileId, Vec<Digest>>, StoreError> {
    let mut found = store.full_tiles(tenant, ids).await?;
    for id in ids {
        let (partial, hashes) = frontier.partial_tile(id.level);
        if partial == *id && !hashes.is_empty() && !found.contains_key(id) {
            found.insert(*id, hashes.to_vec());
        }
    }
    Ok(found)
}

/// Hashes of the given spans, in order, from one fetch of the tiles below their subtrees.
async fn span_hashes<S: Store>(
    store: &S,
    tenant: &TenantId,
    frontier: &Frontier,
    spans: &[Span],
) -> Result<Vec<Digest>, ProofError> {
    let mut ids: Vec<TileId> = spans
        .iter()
        .flat_map(Span::subtrees)
        .map(TileId::of)
        .collect();
    ids.sort();
    ids.dedup();
    let tiles = tiles(store, tenant, frontier, &ids).await?;
    let lookup = |node: NodeId| {
        tiles
            .get(&TileId::of(node))
            .and_then(|tile| node_in_tile(node, tile))
    };
    spans
        .iter()
        .map(|span| {
            span.hash(lookup).ok_or_else(|| {
                let missing = span.subtrees().into_iter().find(|id| lookup(*id).is_none());
                ProofError::MissingNode(missing.unwrap_or(NodeId { level: 0, index: 0 }))
            })
        })
        .collect()
}

fn check_size(tree_size: u64, current: u64) -> Result<(), ProofError> {
    if tree_size == 0 || tree_size > current {
        return Err(ProofError::OutOfRange {
            param: "tree_size",
            message: format!("must be between 1 and the log's size, {current}"),
        });
    }
    Ok(())
}

/// The root of the tenant's tree when it had `tree_size` leaves.
pub async fn root_at<S: Store>(
    store: &S,
    tenant: &TenantId,
    tree_size: u64,
) -> Result<Digest, ProofError> {
    let frontier = current(store, tenant).await?;
    check_size(tree_size, frontier.size())?;
    let span = Span {
        start: 0,
        end: tree_size,
    };
    Ok(span_hashes(store, tenant, &frontier, &[span])
        .await?
        .remove(0))
}

pub async fn inclusion<S: Store>(
    store: &S,
    tenant: &TenantId,
    seq: Seq,
    tree_size: u64,
) -> Result<InclusionProof, ProofError> {
    let frontier = current(store, tenant).await?;
    check_size(tree_size, frontier.size())?;
    let leaf_index = u64::try_from(seq.0 - 1).unwrap_or(u64::MAX);
    if leaf_index >= tree_size {
        return Err(ProofError::OutOfRange {
            param: "tree_size",
            message: format!("event {seq} is not in the tree of size {tree_size}"),
        });
    }
    let mut spans = vec![
        Span {
            start: leaf_index,
            end: leaf_index + 1,
        },
        Span {
            start: 0,
            end: tree_size,
        },
    ];
    spans.extend(inclusion_spans(leaf_index, tree_size));
    let mut hashes = span_hashes(store, tenant, &frontier, &spans)
        .await?
        .into_iter();
    let (Some(leaf_hash), Some(root)) = (hashes.next(), hashes.next()) else {
        unreachable!("two spans requested first")
    };
    Ok(InclusionProof {
        leaf_index,
        tree_size,
        leaf_hash,
        root,
        proof: hashes.collect(),
    })
}

pub async fn consistency<S: Store>(
    store: &S,
    tenant: &TenantId,
    from: u64,
    to: u64,
) -> Result<ConsistencyProof, ProofError> {
    let frontier = current(store, tenant).await?;
    check_size(to, frontier.size()).map_err(|e| match e {
        ProofError::OutOfRange { message, .. } => ProofError::OutOfRange {
            param: "to",
            message,
        },
        other => other,
    })?;
    if from == 0 || from > to {
        return Err(ProofError::OutOfRange {
            param: "from",
            message: format!("must be between 1 and to ({to})"),
        });
    }
    let mut spans = vec![
        Span {
            start: 0,
            end: from,
        },
        Span { start: 0, end: to },
    ];
    spans.extend(consistency_spans(from, to));
    let mut hashes = span_hashes(store, tenant, &frontier, &spans)
        .await?
        .into_iter();
    let (Some(from_root), Some(to_root)) = (hashes.next(), hashes.next()) else {
        unreachable!("two spans requested first")
    };
    Ok(ConsistencyProof {
        from,
        to,
        from_root,
        to_root,
        proof: hashes.collect(),
    })
}
