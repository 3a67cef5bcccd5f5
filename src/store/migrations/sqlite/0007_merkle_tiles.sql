-- The Merkle tree as C2SP tlog-tiles instead of one row per node: a row per full tile of 256
-- hashes (tile level L holds tree level 8·L, so level 0 holds leaf hashes), and the partial
-- tiles at the right edge of each level in the chain head, which every append rewrites anyway.
-- Other nodes are hashed from the tile below them (docs/integrity.md, "How it is stored").
-- Existing logs are carried over from merkle_nodes and events.leaf_hash unchanged.
CREATE TABLE tiles (
    tenant TEXT    NOT NULL,
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hashes BLOB    NOT NULL, -- 256 hashes of 32 bytes, in index order
    PRIMARY KEY (tenant, level, idx)
);

CREATE TRIGGER tiles_are_never_changed BEFORE UPDATE ON tiles
BEGIN
    SELECT RAISE(ABORT, 'tiles is append-only');
END;
CREATE TRIGGER tiles_are_never_deleted BEFORE DELETE ON tiles
BEGIN
    SELECT RAISE(ABORT, 'tiles is append-only');
END;

-- Full level-0 tiles: the leaf hashes of each 256 events up to the head.
INSERT INTO tiles (tenant, level, idx, hashes)
SELECT e.tenant, 0, (e.seq - 1) / 256, unhex(group_concat(hex(e.leaf_hash), '' ORDER BY e.seq))
FROM events e JOIN chain_heads h ON h.tenant = e.tenant
WHERE e.seq <= h.seq - h.seq % 256
GROUP BY e.tenant, (e.seq - 1) / 256
HAVING count(*) = 256;

-- Full tiles above: the stored nodes of tree levels 8, 16, …
INSERT INTO tiles (tenant, level, idx, hashes)
SELECT n.tenant, n.level / 8, n.idx / 256, unhex(group_concat(hex(n.hash), '' ORDER BY n.idx))
FROM merkle_nodes n JOIN chain_heads h ON h.tenant = n.tenant
WHERE n.level % 8 = 0 AND n.level > 0 AND n.idx < ((h.seq >> n.level) / 256) * 256
GROUP BY n.tenant, n.level, n.idx / 256
HAVING count(*) = 256;

-- The head's partial tiles, lowest level first, replace the frontier (whose subtrees all lie
-- inside them): level 0's from the events after the last full tile, the others from the nodes.
ALTER TABLE chain_heads ADD COLUMN partial_tiles BLOB NOT NULL DEFAULT x'';
UPDATE chain_heads SET partial_tiles = coalesce(unhex(coalesce((
    SELECT group_concat(hex(e.leaf_hash), '' ORDER BY e.seq)
    FROM events e
    WHERE e.tenant = chain_heads.tenant
        AND e.seq > chain_heads.seq - chain_heads.seq % 256 AND e.seq <= chain_heads.seq
), '') || coalesce((
    SELECT group_concat(hex(n.hash), '' ORDER BY n.level, n.idx)
    FROM merkle_nodes n
    WHERE n.tenant = chain_heads.tenant AND n.level % 8 = 0 AND n.level > 0
        AND n.idx >= ((chain_heads.seq >> n.level) / 256) * 256
        AND n.idx < (chain_heads.seq >> n.level)
), '')), x'');
ALTER TABLE chain_heads DROP COLUMN frontier;

DROP TRIGGER merkle_nodes_are_never_changed;
DROP TRIGGER merkle_nodes_are_never_deleted;
DROP TABLE merkle_nodes;
