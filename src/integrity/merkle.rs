//! RFC 6962 / RFC 9162 Merkle tree over a tenant's leaf hashes, stored as C2SP tiles.
//!
//! A complete subtree is named by `(level, index)`: it covers leaves
//! `index * 2^level .. (index + 1) * 2^level`. Level 0 nodes are the leaf hashes themselves.
//! The append side only needs the *frontier*, the partial tile at the right edge of each tile
//! level (every complete subtree of the current tree lies inside one); proofs name the subtrees
//! they need, and each is hashed from the one tile below it (`super::tiles::node_in_tile`).

use super::tiles::{FullTile, TILE_HEIGHT, TILE_LEVELS, TILE_WIDTH, TileId};
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

/// The right edge of the tree, kept as C2SP tiles (`super::tiles`): for each tile level `L`, the
/// hashes of tree level `8·L` in the partial tile at its end, `(size >> 8·L) mod 256` of them.
/// Every complete subtree of the tree's decomposition lies inside one of these partial tiles, so
/// the root needs nothing else. Appending a leaf may fill a tile at one or more levels: the full
/// tile is handed back to be stored once, and its root enters the level above.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    partial: [Vec<Digest>; TILE_LEVELS],
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns the tiles it fills, lowest level first, for storage.
    pub fn push(&mut self, leaf: Digest) -> Vec<FullTile> {
        let mut filled = Vec::new();
        let size = self.size + 1;
        let mut hash = leaf;
        for level in 0..TILE_LEVELS {
            let partial = &mut self.partial[level];
            partial.push(hash);
            if partial.len() < TILE_WIDTH as usize {
                break;
            }
            let hashes = std::mem::take(partial);
            hash = tree_hash(&hashes);
            filled.push(FullTile {
                id: TileId {
                    level: level as u8,
                    index: (size >> (TILE_HEIGHT * level as u32)) / TILE_WIDTH - 1,
                },
                hashes,
            });
        }
        self.size = size;
        filled
    }

    /// The tree head: the complete subtrees of the decomposition, folded right to left.
    pub fn root(&self) -> Digest {
        let mut root: Option<Digest> = None;
        for level in (0..64).filter(|level| (self.size >> level) & 1 == 1) {
            let subtree = self.subtree(level);
            root = Some(match root {
                None => subtree,
                Some(right) => node_hash(&subtree, &right),
            });
        }
        root.unwrap_or_else(empty_root)
    }

    /// The complete subtree at tree level `level` of the decomposition (bit `level` of the size
    /// is set): the last `2^(level mod 8)` aligned hashes of the partial tile below it.
    fn subtree(&self, level: u32) -> Digest {
        let tile_level = (level / TILE_HEIGHT) as usize;
        let count = 1usize << (level % TILE_HEIGHT);
        let width = self.partial[tile_level].len();
        let end = width & !(count - 1);
        tree_hash(&self.partial[tile_level][end - count..end])
    }

    /// The partial tile of a tile level: its index and hashes (none when the level ends on a
    /// tile boundary).
    pub fn partial_tile(&self, level: u8) -> (TileId, &[Digest]) {
        let index = (self.size >> (TILE_HEIGHT * u32::from(level))) / TILE_WIDTH;
        let hashes = self
            .partial
            .get(usize::from(level))
            .map_or(&[][..], Vec::as_slice);
        (TileId { level, index }, hashes)
    }

    /// Stored form: the partial tiles concatenated, lowest level first; their widths follow
    /// from the size.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.partial.iter().flatten().flat_map(|h| h.0).collect()
    }

    /// Rebuilds a frontier from its stored form; `None` if it does not fit `size`.
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        let width = |level: usize| ((size >> (TILE_HEIGHT * level as u32)) % TILE_WIDTH) as usize;
        let expected: usize = (0..TILE_LEVELS).map(width).sum();
        if bytes.len() != expected * 32 {
            return None;
        }
        let mut partial: [Vec<Digest>; TILE_LEVELS] = Default::default();
        let mut rest = bytes.chunks_exact(32).filter_map(Digest::from_slice);
        for (level, hashes) in partial.iter_mut().enumerate() {
            hashes.extend(rest.by_ref().take(width(level)));
        }
        Some(Self { size, partial })
    }
}

/// The Merkle tree hash (RFC 9162 MTH) of a run of hashes taken as leaves of a subtree: for a
/// power-of-two count, the hash of the complete subtree above them.
pub fn tree_hash(hashes: &[Digest]) -> Digest {
    match hashes.len() {
        0 => empty_root(),
        1 => hashes[0],
        n => {
            let k = largest_power_of_two_below(n as u64) as usize;
            node_hash(&tree_hash(&hashes[..k]), &tree_hash(&hashes[k..]))
        }
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

    /// Builds a tree the way the writer does, keeping the tiles it fills, and every complete
    /// subtree's hash computed level by level, independently of the tiles.
    fn build(size: u64) -> (Frontier, HashMap<NodeId, Digest>, Vec<Digest>) {
        let built = build_tiled(size);
        (built.frontier, built.nodes, built.leaves)
    }

    /// A tree built by [`build_tiled`].
    struct Built {
        frontier: Frontier,
        tiles: HashMap<TileId, Vec<Digest>>,
        nodes: HashMap<NodeId, Digest>,
        leaves: Vec<Digest>,
    }

    fn build_tiled(size: u64) -> Built {
        let mut frontier = Frontier::default();
        let mut tiles = HashMap::new();
        let leaves: Vec<Digest> = (0..size).map(leaf).collect();
        for l in &leaves {
            for tile in frontier.push(*l) {
                assert!(tiles.insert(tile.id, tile.hashes).is_none(), "filled twice");
            }
        }
        let mut nodes = HashMap::new();
        let mut row = leaves.clone();
        let mut level = 0;
        while !row.is_empty() {
            for (index, hash) in row.iter().enumerate() {
                nodes.insert(
                    NodeId {
                        level,
                        index: index as u64,
                    },
                    *hash,
                );
            }
            row = row
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            level += 1;
        }
        Built {
            frontier,
            tiles,
            nodes,
            leaves,
        }
    }

    /// A complete subtree's hash as the store serves it: from a full tile, else the partial one.
    fn from_tiles(
        node: NodeId,
        frontier: &Frontier,
        tiles: &HashMap<TileId, Vec<Digest>>,
    ) -> Option<Digest> {
        let id = TileId::of(node);
        let (partial, hashes) = frontier.partial_tile(id.level);
        let tile = tiles
            .get(&id)
            .map(Vec::as_slice)
            .or((partial == id).then_some(hashes))?;
        super::super::tiles::node_in_tile(node, tile)
    }

    /// A proof's hashes as the store serves them, from tiles.
    fn proof(spans: &[Span], size: u64) -> Vec<Digest> {
        let Built {
            frontier, tiles, ..
        } = build_tiled(size);
        spans
            .iter()
            .map(|s| s.hash(|id| from_tiles(id, &frontier, &tiles)).unwrap())
            .collect()
    }

    /// Sizes on both sides of tile boundaries at levels 0 and 1, and some in between.
    const SIZES: [u64; 16] = [
        0, 1, 2, 7, 255, 256, 257, 511, 512, 513, 767, 1000, 65535, 65536, 65537, 66_050,
    ];

    #[test]
    fn frontier_root_matches_the_definition_for_every_small_size_and_at_tile_boundaries() {
        for size in (0..70).chain(SIZES) {
            let (frontier, _, leaves) = build(size);
            assert_eq!(frontier.root(), reference_root(&leaves), "size {size}");
            let stored = Frontier::from_bytes(size, &frontier.to_bytes()).unwrap();
            assert_eq!(stored, frontier);
            assert!(Frontier::from_bytes(size + 1, &frontier.to_bytes()).is_none());
        }
    }

    #[test]
    fn every_node_is_served_from_its_tile_at_tile_boundaries() {
        for size in SIZES {
            let Built {
                frontier,
                tiles,
                nodes,
                ..
            } = build_tiled(size);
            let full_tiles = |level: u32| (size >> (8 * level)) / 256;
            for level in 0..2 {
                let id = |index| TileId {
                    level: level as u8,
                    index,
                };
                assert!((0..full_tiles(level)).all(|i| tiles[&id(i)].len() == 256));
                assert!(!tiles.contains_key(&id(full_tiles(level))), "size {size}");
                let (partial, hashes) = frontier.partial_tile(level as u8);
                assert_eq!(partial, id(full_tiles(level)));
                assert_eq!(hashes.len() as u64, (size >> (8 * level)) % 256);
            }
            // Every stored node the old layout kept, up to level 17, hashed from its tile.
            let mut checked = 0;
            for (node, hash) in nodes.iter().filter(|(n, _)| n.level <= 17) {
                assert_eq!(
                    from_tiles(*node, &frontier, &tiles),
                    Some(*hash),
                    "size {size}, node {node:?}"
                );
                checked += 1;
            }
            assert!(checked >= size, "size {size}");
        }
    }

    proptest! {
        #[test]
        fn every_inclusion_proof_verifies_and_any_bit_flip_breaks_it(
            size in 1u64..600, pick in any::<u64>(), bit in 0usize..256
        ) {
            let (frontier, _, leaves) = build(size);
            let index = pick % size;
            let root = frontier.root();
            let path = proof(&inclusion_spans(index, size), size);
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
            new in 1u64..600, pick in any::<u64>(), bit in 0usize..256
        ) {
            let old = pick % new + 1;
            let (new_frontier, _, leaves) = build(new);
            let old_root = reference_root(&leaves[..old as usize]);
            let new_root = new_frontier.root();
            let path = proof(&consistency_spans(old, new), new);
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
