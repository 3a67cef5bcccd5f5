//! A dropped prefix of a tenant's log. On PostgreSQL, retention drops a whole month partition
//! once every tenant with events in it has outlived it; the rows of the tenant's oldest `seq`s
//! are then gone, but their leaf hashes stay in the level-0 tiles. What the log keeps of the
//! prefix, the chain hash of its last event and the tree's right edge at its end, is enough to
//! verify every later event and tree head (`docs/integrity.md`, "Dropped partitions").
//!
//! Each drop is recorded, in the transaction that drops the partition, by an `audit.dropped`
//! event in every tenant it touches, whose payload names what went:
//!
//! ```json
//! {"dropped": [1, 4096], "partition": "events_y2025m01", "chain_hash": "<hex>",
//!  "root": "<hex>", "reason": "retention: recorded more than 30 days ago"}
//! ```
//!
//! `chain_hash` is the chain hash of event 4096 and `root` the tree head at size 4096.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use super::merkle::Frontier;
use super::tiles::{TILE_WIDTH, TileId};
use crate::model::{Digest, Seq, TenantId};
use crate::store::{Store, StoreError};

/// The event type of a drop's record.
pub const DROP_EVENT_TYPE: &str = "audit.dropped";

/// The prefix `1..=through` of a tenant's log whose rows were dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPrefix {
    /// The last dropped `seq`: the rows start at `through + 1`.
    pub through: Seq,
    /// The chain hash of event `through`: the first retained event's `prev_hash`.
    pub chain_hash: Digest,
    /// The tree's right edge at size `through`, from which every later tree head follows.
    pub frontier: Frontier,
}

/// What a drop's record says: the `seq` range dropped, the chain hash of its last event and the
/// tree head at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropRecord {
    pub first: Seq,
    pub through: Seq,
    pub chain_hash: Digest,
    pub root: Digest,
}

impl DropRecord {
    /// Whether the record names exactly this prefix.
    pub fn names(&self, prefix: &DroppedPrefix) -> bool {
        self.through == prefix.through
            && self.chain_hash == prefix.chain_hash
            && self.root == prefix.frontier.root()
    }
}

/// The payload of the record of dropping `first..=prefix.through` with `partition`.
pub fn record_payload(
    first: Seq,
    prefix: &DroppedPrefix,
    partition: &str,
    reason: &str,
) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert(
        "dropped".into(),
        Value::from(vec![first.0, prefix.through.0]),
    );
    data.insert("partition".into(), Value::from(partition));
    data.insert("chain_hash".into(), Value::from(prefix.chain_hash.to_hex()));
    data.insert("root".into(), Value::from(prefix.frontier.root().to_hex()));
    data.insert("reason".into(), Value::from(reason));
    data
}

/// The drop a record's payload names, if it has the expected shape.
pub fn parse_record(data: &Map<String, Value>) -> Option<DropRecord> {
    let [first, through] = data.get("dropped")?.as_array()?.as_slice() else {
        return None;
    };
    let digest = |name: &str| {
        let bytes = hex::decode(data.get(name)?.as_str()?).ok()?;
        Digest::from_slice(&bytes)
    };
    Some(DropRecord {
        first: Seq(first.as_i64()?),
        through: Seq(through.as_i64()?),
        chain_hash: digest("chain_hash")?,
        root: digest("root")?,
    })
}

/// A tenant's dropped prefix as an export carries it (`{"dropped_prefix": …}`): the frontier as
/// its stored form ([`Frontier::to_bytes`]) in base64.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ExportedPrefix {
    pub tenant: TenantId,
    pub through: Seq,
    pub chain_hash: String,
    pub frontier: String,
}

impl ExportedPrefix {
    pub fn new(tenant: TenantId, prefix: &DroppedPrefix) -> Self {
        Self {
            tenant,
            through: prefix.through,
            chain_hash: prefix.chain_hash.to_hex(),
            frontier: BASE64.encode(prefix.frontier.to_bytes()),
        }
    }

    /// The prefix, if every part decodes and the frontier fits its size.
    pub fn prefix(&self) -> Option<DroppedPrefix> {
        let chain_hash = Digest::from_slice(&hex::decode(&self.chain_hash).ok()?)?;
        let size = u64::try_from(self.through.0).ok()?;
        let frontier = Frontier::from_bytes(size, &BASE64.decode(&self.frontier).ok()?)?;
        Some(DroppedPrefix {
            through: self.through,
            chain_hash,
            frontier,
        })
    }
}

/// Level-0 tiles read per round trip by [`stored_leaves`]: 2 MiB of hashes.
const TILES_PER_READ: u64 = 256;

/// The leaf hashes `from..to` (0-based leaf indexes) as stored in the tenant's full level-0
/// tiles, in order, a run of up to [`TILES_PER_READ`] tiles per call to `each`. Ends early,
/// returning the index of the first leaf it could not read, when a tile is missing.
pub async fn stored_leaves<S: Store>(
    store: &S,
    tenant: &TenantId,
    from: u64,
    to: u64,
    mut each: impl FnMut(&[Digest]),
) -> Result<Result<(), u64>, StoreError> {
    let mut next = from;
    while next < to {
        let first_tile = next / TILE_WIDTH;
        let last_tile = (to - 1) / TILE_WIDTH;
        let ids: Vec<TileId> = (first_tile..=last_tile.min(first_tile + TILES_PER_READ - 1))
            .map(|index| TileId { level: 0, index })
            .collect();
        let tiles = store.full_tiles(tenant, &ids).await?;
        for id in &ids {
            let Some(hashes) = tiles.get(id) else {
                return Ok(Err(next));
            };
            let start = (next - id.index * TILE_WIDTH) as usize;
            let end = (to - id.index * TILE_WIDTH).min(TILE_WIDTH) as usize;
            each(&hashes[start..end]);
            next = id.index * TILE_WIDTH + end as u64;
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(size: u64) -> DroppedPrefix {
        let mut frontier = Frontier::default();
        for i in 0..size {
            frontier.push(Digest::sha256(&[&i.to_be_bytes()]));
        }
        DroppedPrefix {
            through: Seq(size as i64),
            chain_hash: Digest::sha256(&[b"chain"]),
            frontier,
        }
    }

    #[test]
    fn a_record_names_the_prefix_it_was_made_for() {
        let dropped = prefix(300);
        let data = record_payload(Seq(1), &dropped, "events_y2025m01", "retention");
        let record = parse_record(&data).expect("parses");
        assert_eq!(record.first, Seq(1));
        assert!(record.names(&dropped));
        assert!(!record.names(&prefix(299)));
    }

    #[test]
    fn an_exported_prefix_reads_back_and_a_wrong_frontier_does_not() {
        let dropped = prefix(600);
        let exported = ExportedPrefix::new(TenantId::new("default"), &dropped);
        assert_eq!(exported.prefix(), Some(dropped));
        let wrong_size = ExportedPrefix {
            through: Seq(601),
            ..exported
        };
        assert_eq!(wrong_size.prefix(), None);
    }
}
