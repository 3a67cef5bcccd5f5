//! The log as C2SP `tlog-tiles` (<https://c2sp.org/tlog-tiles>): tiles of 256 hashes, each tile at
//! level `L` holding the hashes of tree level `8·L`, and entry bundles holding the leaves' encoded
//! entries, so that any tlog-tiles client can audit a tenant's log without this service's API.
//!
//! Paths (relative to a log's prefix): `tile/<L>/<N>[.p/<W>]` and `tile/entries/<N>[.p/<W>]`, where
//! `<N>` is written in groups of three digits, all but the last prefixed with `x`
//! (`1234067` → `x001/x234/067`), and `.p/<W>` names a partial tile of `W` (1–255) hashes or
//! entries. An entry is the exact byte string whose SHA-256 with a `0x00` prefix is the event's
//! leaf hash (the leaf encoding of `docs/integrity.md`); a bundle is each entry preceded by its
//! length as a big-endian 16-bit integer.

use super::merkle::{NodeId, tree_hash};
use crate::model::Digest;

/// Hashes (or entries) in a full tile: tiles have height 8.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels per tile level.
pub const TILE_HEIGHT: u32 = 8;
/// The highest tile level: level 63 would name tree level 504, far beyond any 64-bit size.
const MAX_LEVEL: u8 = 7;
/// Tile levels a tree of up to `2^64 - 1` leaves can have (level 7 is never full).
pub const TILE_LEVELS: usize = MAX_LEVEL as usize + 1;

/// A hash tile as stored: its level and index, whatever its width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    pub level: u8,
    pub index: u64,
}

impl TileId {
    /// The tile holding the hashes below a complete subtree: the subtree's level `8·L + h`
    /// (`h < 8`) puts it above `2^h` consecutive, aligned hashes of tree level `8·L`, which
    /// never straddle two tiles.
    pub fn of(node: NodeId) -> Self {
        let level = node.level / TILE_HEIGHT;
        let first = node.index << (node.level % TILE_HEIGHT);
        Self {
            level: level as u8,
            index: first / TILE_WIDTH,
        }
    }

    /// The tree leaves this tile's hashes cover, once full: its last leaf's position, plus one.
    pub fn end_leaf(&self) -> u64 {
        let leaves_per_tile = TILE_WIDTH << (TILE_HEIGHT * u32::from(self.level));
        (self.index + 1).saturating_mul(leaves_per_tile)
    }
}

/// A tile of 256 hashes, filled by an append and stored once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullTile {
    pub id: TileId,
    pub hashes: Vec<Digest>,
}

/// The hash of a complete subtree from the hashes of the tile below it ([`TileId::of`]), full
/// or partial; `None` if the tile does not yet hold all the hashes the subtree covers.
pub fn node_in_tile(node: NodeId, tile: &[Digest]) -> Option<Digest> {
    let height = node.level % TILE_HEIGHT;
    let first = (node.index << height) % TILE_WIDTH;
    let (first, count) = (first as usize, 1usize << height);
    tile.get(first..first + count).map(tree_hash)
}

/// What a tile holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileKind {
    /// Hashes of tree level `8 · level`.
    Hashes { level: u8 },
    /// Entries (leaf encodings) of the leaves `index · 256 ..`.
    Entries,
}

/// A tile coordinate: kind, index within its level, and width (256 for a full tile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub kind: TileKind,
    pub index: u64,
    pub width: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a tile path (tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>])")]
pub struct TilePathError(pub String);

impl Tile {
    /// Parses the part of a path after `tile/`, accepting only the canonical spelling.
    pub fn parse(path: &str) -> Result<Self, TilePathError> {
        let error = || TilePathError(format!("tile/{path}"));
        let (kind, rest) = path.split_once('/').ok_or_else(error)?;
        let kind = match kind {
            "entries" => TileKind::Entries,
            level => {
                let level: u8 = level.parse().map_err(|_| error())?;
                if level > MAX_LEVEL {
                    return Err(error());
                }
                TileKind::Hashes { level }
            }
        };
        let (digits, width) = match rest.split_once(".p/") {
            Some((digits, width)) => {
                let width: u16 = width.parse().map_err(|_| error())?;
                if !(1..TILE_WIDTH as u16).contains(&width) {
                    return Err(error());
                }
                (digits, width)
            }
            None => (rest, TILE_WIDTH as u16),
        };
        let mut index: u64 = 0;
        for group in digits.split('/') {
            let group = group.strip_prefix('x').unwrap_or(group);
            if group.len() != 3 || !group.bytes().all(|b| b.is_ascii_digit()) {
                return Err(error());
            }
            let value: u64 = group.parse().map_err(|_| error())?;
            index = index
                .checked_mul(1000)
                .and_then(|i| i.checked_add(value))
                .ok_or_else(error)?;
        }
        let tile = Self { kind, index, width };
        // One spelling per tile: `x000/001`, a missing `x`, or `.p/256` are not it.
        if tile.path() == format!("tile/{path}") {
            Ok(tile)
        } else {
            Err(error())
        }
    }

    /// The tile's path, `tile/…`.
    pub fn path(&self) -> String {
        let mut index = self.index;
        let mut digits = format!("{:03}", index % 1000);
        while index >= 1000 {
            index /= 1000;
            digits = format!("x{:03}/{digits}", index % 1000);
        }
        let kind = match self.kind {
            TileKind::Hashes { level } => level.to_string(),
            TileKind::Entries => "entries".to_owned(),
        };
        let partial = if u64::from(self.width) == TILE_WIDTH {
            String::new()
        } else {
            format!(".p/{}", self.width)
        };
        format!("tile/{kind}/{digits}{partial}")
    }

    /// The tree level whose hashes a hash tile holds (0 for entry bundles: the leaves').
    fn tree_level(&self) -> u32 {
        match self.kind {
            TileKind::Hashes { level } => u32::from(level) * TILE_HEIGHT,
            TileKind::Entries => 0,
        }
    }

    /// The position of the tile's first hash or entry within its tree level.
    pub fn first(&self) -> u64 {
        self.index.saturating_mul(TILE_WIDTH)
    }

    /// Whether a tree of `tree_size` leaves has every hash (or entry) of this tile.
    pub fn within(&self, tree_size: u64) -> bool {
        let available = tree_size.checked_shr(self.tree_level()).unwrap_or(0);
        self.first()
            .checked_add(u64::from(self.width))
            .is_some_and(|end| end <= available)
    }
}

/// An entry bundle: each entry preceded by its length, a big-endian `u16`. `None` if an entry is
/// longer than 65535 bytes (a leaf encoding never is: its text fields are bounded).
pub fn entry_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut bundle = Vec::new();
    for entry in entries {
        let length = u16::try_from(entry.len()).ok()?;
        bundle.extend_from_slice(&length.to_be_bytes());
        bundle.extend_from_slice(entry);
    }
    Some(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_spec() {
        let cases = [
            ("0/000", TileKind::Hashes { level: 0 }, 0, 256),
            (
                "1/x001/x234/067",
                TileKind::Hashes { level: 1 },
                1_234_067,
                256,
            ),
            (
                "0/x001/x234/067.p/8",
                TileKind::Hashes { level: 0 },
                1_234_067,
                8,
            ),
            ("entries/001.p/44", TileKind::Entries, 1, 44),
            ("entries/x002/000", TileKind::Entries, 2000, 256),
        ];
        for (path, kind, index, width) in cases {
            let tile = Tile::parse(path).unwrap();
            assert_eq!(tile, Tile { kind, index, width }, "{path}");
            assert_eq!(tile.path(), format!("tile/{path}"));
        }
    }

    #[test]
    fn other_spellings_are_refused() {
        for path in [
            "0/0",
            "0/1234",
            "0/x000/001",
            "0/001.p/0",
            "0/001.p/256",
            "0/001.p/",
            "8/000",
            "-1/000",
            "0/",
            "entries",
            "0/00a",
            "0/1.p/3",
            "data/000",
        ] {
            assert!(Tile::parse(path).is_err(), "{path}");
        }
    }

    #[test]
    fn a_tile_is_within_a_tree_once_all_its_hashes_exist() {
        let full = Tile::parse("0/000").unwrap();
        assert!(!full.within(255));
        assert!(full.within(256));
        let partial = Tile::parse("0/001.p/44").unwrap();
        assert!(partial.within(300));
        assert!(!partial.within(299));
        let upper = Tile::parse("1/000.p/1").unwrap();
        assert!(upper.within(256));
        assert!(!upper.within(255));
    }

    #[test]
    fn a_subtree_is_hashed_from_the_one_tile_below_it() {
        let node = |level, index| NodeId { level, index };
        let tile = |level, index| TileId { level, index };
        assert_eq!(TileId::of(node(0, 255)), tile(0, 0));
        assert_eq!(TileId::of(node(0, 256)), tile(0, 1));
        assert_eq!(TileId::of(node(7, 1)), tile(0, 0));
        assert_eq!(TileId::of(node(7, 2)), tile(0, 1));
        assert_eq!(TileId::of(node(8, 0)), tile(1, 0));
        assert_eq!(TileId::of(node(9, 128)), tile(1, 1));
        assert_eq!(TileId::of(node(16, 3)), tile(2, 0));
        assert_eq!(TileId::of(node(16, 256)), tile(2, 1));
        assert_eq!(tile(0, 0).end_leaf(), 256);
        assert_eq!(tile(1, 2).end_leaf(), 3 * 65536);

        let hashes: Vec<Digest> = (0u8..=255).map(|i| Digest([i; 32])).collect();
        let pair = crate::integrity::merkle::node_hash(&hashes[254], &hashes[255]);
        assert_eq!(node_in_tile(node(1, 383), &hashes), Some(pair));
        assert_eq!(node_in_tile(node(0, 300), &hashes), Some(hashes[44]));
        assert_eq!(
            node_in_tile(node(7, 3), &hashes),
            Some(tree_hash(&hashes[128..]))
        );
        // Tree level 8 is a level-1 tile's own hashes.
        assert_eq!(node_in_tile(node(8, 5), &hashes), Some(hashes[5]));
        // A partial tile serves only the subtrees it already covers.
        assert_eq!(node_in_tile(node(2, 1), &hashes[..7]), None);
        assert_eq!(
            node_in_tile(node(2, 0), &hashes[..7]),
            Some(tree_hash(&hashes[..4]))
        );
    }

    #[test]
    fn bundles_prefix_each_entry_with_its_length() {
        let bundle = entry_bundle([b"ab".as_slice(), b"".as_slice(), b"xyz".as_slice()]).unwrap();
        assert_eq!(bundle, b"\x00\x02ab\x00\x00\x00\x03xyz");
        assert!(entry_bundle([vec![0u8; 70_000].as_slice()]).is_none());
    }
}
