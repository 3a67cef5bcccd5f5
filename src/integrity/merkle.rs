//! RFC 6962 / RFC 9162 Merkle tree over a tenant's leaf hashes, kept as stored complete subtrees.
//!
//! A complete subtree is named by `(level, index)`: it covers leaves
//! `index * 2^level .. (index + 1) * 2^level`. Level 0 nodes are the leaf hashes themselves.
//! The append side only needs the *frontier* (the complete subtrees that make up the current
//! tree, largest first); proofs name the subtrees they need so a store fetches O(log n) nodes.

use crate::model::Digest;

/// An interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest::sha256(&[&[0x01], left.as_bytes(), right.as_bytes()])
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Digest {
    Digest::sha256(&[])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    pub level: u32,
    pub index: u64,
}

/// The complete subtrees covering a tree of `size` leaves, largest (leftmost) first, with their
/// hashes. Appending a leaf merges equal-sized subtrees, emitting each new interior node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Digest>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns the interior nodes this completes, for storage.
    pub fn push(&mut self, leaf: Digest) -> Vec<(NodeId, Digest)> {
        let mut created = Vec::new();
        let mut hash = leaf;
        let mut index = self.size;
        let mut level = 0;
        // Each trailing 1-bit of the old size is a same-sized left sibling to merge with.
        while index & 1 == 1 {
            let left = self
                .hashes
                .pop()
                .unwrap_or_else(|| unreachable!("frontier matches size"));
            hash = node_hash(&left, &hash);
            index >>= 1;
            level += 1;
            created.push((NodeId { level, index }, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        created
    }

    /// The tree head: the frontier folded right to left.
    pub fn root(&self) -> Digest {
        let mut iter = self.hashes.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(last) => iter.fold(*last, |right, left| node_hash(left, &right)),
        }
    }

    /// Stored form: the hashes concatenated, largest subtree first.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.hashes.iter().flat_map(|h| h.0).collect()
    }

    /// Rebuilds a frontier from its stored form; `None` if it does not fit `size`.
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(32) || bytes.len() / 32 != size.count_ones() as usize {
            return None;
        }
        let hashes = bytes.chunks(32).filter_map(Digest::from_slice).collect();
        Some(Self { size, hashes })
    }
}

fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// A run of leaves `[start, end)` whose Merkle tree hash is one element of a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    /// The complete subtrees that make up this span, left to right. Spans produced by the
    /// proof functions always start at a multiple of a power of two at least their size.
    pub fn subtrees(&self) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        let mut start = self.start;
        while start < self.end {
            let remaining = self.end - start;
            let mut size = 1u64 << (63 - remaining.leading_zeros());
            while !start.is_multiple_of(size) {
                size >>= 1;
            }
            nodes.push(NodeId {
                level: size.trailing_zeros(),
                index: start / size,
            });
            start += size;
        }
        nodes
    }

    /// The span's tree hash from its subtrees' hashes (in [`Span::subtrees`] order).
    pub fn hash(&self, lookup: impl Fn(NodeId) -> Option<Digest>) -> Option<Digest> {
        let hashes: Vec<Digest> = self
            .subtrees()
            .into_iter()
            .map(lookup)
            .collect::<Option<_>>()?;
        let mut iter = hashes.iter().rev();
        let last = *iter.next()?;
        Some(iter.fold(last, |right, left| node_hash(left, &right)))
    }
}

/// RFC 9162 §2.1.3.1 PATH(m, D[n]): the spans whose hashes form the inclusion proof of leaf
/// `index` in a tree of `size` leaves, in proof order.
pub fn inclusion_spans(index: u64, size: u64) -> Vec<Span> {
    let mut spans = Vec::new();
    path(index, 0, size, &mut spans);
    spans
}

fn path(m: u64, start: u64, end: u64, out: &mut Vec<Span>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = largest_power_of_two_below(n);
    if m < k {
        path(m, start, start + k, out);
        out.push(Span {
            start: start + k,
            end,
        });
    } else {
        path(m - k, start + k, end, out);
        out.push(Span {
            start,
            end: start + k,
        });
    }
}

/// RFC 9162 §2.1.4.1 PROOF(m, D[n]): the spans whose hashes form the consistency proof from a
/// tree of `old` leaves to one of `new` leaves (`0 < old <= new`).
pub fn consistency_spans(old: u64, new: u64) -> Vec<Span> {
    let mut spans = Vec::new();
    if old > 0 && old < new {
        subproof(old, 0, new, true, &mut spans);
    }
    spans
}

fn subproof(m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Span>) {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(Span { start, end });
        }
        return;
    }
    let k = largest_power_of_two_below(n);
    if m <= k {
        subproof(m, start, start + k, whole, out);
        out.push(Span {
            start: start + k,
            end,
        });
    } else {
        subproof(m - k, start + k, end, false, out);
        out.push(Span {
            start,
            end: start + k,
        });
    }
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf `index` with hash `leaf` in the tree `root` of `size`?
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Digest,
    proof: &[Digest],
    root: &Digest,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree `new_root` of `new` leaves extends `old_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Digest,
    new_root: &Digest,
    proof: &[Digest],
) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Digest> = proof.to_vec();
    if old.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn leaf(i: u64) -> Digest {
        Digest::sha256(&[&[0x00], &i.to_be_bytes()])
    }

    /// MTH straight from RFC 9162's definition, sharing nothing with the code under test.
    fn reference_root(leaves: &[Digest]) -> Digest {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = largest_power_of_two_below(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    /// Builds a tree the way the writer does, keeping every node it stores.
    fn build(size: u64) -> (Frontier, HashMap<NodeId, Digest>, Vec<Digest>) {
        let mut frontier = Frontier::default();
        let mut nodes = HashMap::new();
        let leaves: Vec<Digest> = (0..size).map(leaf).collect();
        for (i, l) in leaves.iter().enumerate() {
            nodes.insert(
                NodeId {
                    level: 0,
                    index: i as u64,
                },
                *l,
            );
            nodes.extend(frontier.push(*l));
        }
        (frontier, nodes, leaves)
    }

    fn proof(spans: &[Span], nodes: &HashMap<NodeId, Digest>) -> Vec<Digest> {
        spans
            .iter()
            .map(|s| s.hash(|id| nodes.get(&id).copied()).unwrap())
            .collect()
    }

    #[test]
    fn frontier_root_matches_the_definition_for_every_small_size() {
        for size in 0..70 {
            let (frontier, _, leaves) = build(size);
            assert_eq!(frontier.root(), reference_root(&leaves), "size {size}");
            let stored = Frontier::from_bytes(size, &frontier.to_bytes()).unwrap();
            assert_eq!(stored, frontier);
        }
    }

    proptest! {
        #[test]
        fn every_inclusion_proof_verifies_and_any_bit_flip_breaks_it(
            size in 1u64..300, pick in any::<u64>(), bit in 0usize..256
        ) {
            let (frontier, nodes, leaves) = build(size);
            let index = pick % size;
            let root = frontier.root();
            let path = proof(&inclusion_spans(index, size), &nodes);
            prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &path, &root));
            let mut flipped_leaf = leaves[index as usize];
            flipped_leaf.0[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify_inclusion(index, size, &flipped_leaf, &path, &root));
            if !path.is_empty() {
                let mut broken = path.clone();
                let at = (pick as usize) % broken.len();
                broken[at].0[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_inclusion(index, size, &leaves[index as usize], &broken, &root));
            }
        }

        #[test]
        fn every_consistency_proof_verifies_and_any_bit_flip_breaks_it(
            new in 1u64..300, pick in any::<u64>(), bit in 0usize..256
        ) {
            let old = pick % new + 1;
            let (new_frontier, nodes, leaves) = build(new);
            let old_root = reference_root(&leaves[..old as usize]);
            let new_root = new_frontier.root();
            let path = proof(&consistency_spans(old, new), &nodes);
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &path));
            let mut other_root = old_root;
            other_root.0[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify_consistency(old, new, &other_root, &new_root, &path));
            if !path.is_empty() {
                let mut broken = path.clone();
                let at = (pick as usize) % broken.len();
                broken[at].0[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_consistency(old, new, &old_root, &new_root, &broken));
            }
        }
    }

    #[test]
    fn spans_decompose_into_aligned_complete_subtrees() {
        let span = Span { start: 8, end: 15 };
        let ids: Vec<(u32, u64)> = span.subtrees().iter().map(|n| (n.level, n.index)).collect();
        assert_eq!(ids, vec![(2, 2), (1, 6), (0, 14)]);
    }
}
