-- The Merkle tree as C2SP tlog-tiles instead of one row per node: a row per full tile of 256
-- hashes (tile level L holds tree level 8·L, so level 0 holds leaf hashes), and the partial
-- tiles at the right edge of each level in the chain head, which every append rewrites anyway.
-- Other nodes are hashed from the tile below them (docs/integrity.md, "How it is stored").
-- Existing logs are carried over from merkle_nodes and events.leaf_hash unchanged.
CREATE TABLE tiles (
    tenant TEXT     NOT NULL,
    level  SMALLINT NOT NULL,
    idx    BIGINT   NOT NULL,
    hashes BYTEA    NOT NULL, -- 256 hashes of 32 bytes, in index order
    PRIMARY KEY (tenant, level, idx)
);
-- Hashes do not compress: store them out of line without trying.
ALTER TABLE tiles ALTER COLUMN hashes SET STORAGE EXTERNAL;

CREATE TRIGGER tiles_are_never_changed BEFORE UPDATE OR DELETE OR TRUNCATE ON tiles
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();

-- Full level-0 tiles: the leaf hashes of each 256 events up to the head.
INSERT INTO tiles (tenant, level, idx, hashes)
SELECT e.tenant, 0, (e.seq - 1) / 256, string_agg(e.leaf_hash, ''::bytea ORDER BY e.seq)
FROM events e JOIN chain_heads h ON h.tenant = e.tenant
WHERE e.seq <= h.seq - h.seq % 256
GROUP BY e.tenant, (e.seq - 1) / 256
HAVING count(*) = 256;

-- Full tiles above: the stored nodes of tree levels 8, 16, …
INSERT INTO tiles (tenant, level, idx, hashes)
SELECT n.tenant, n.level / 8, n.idx / 256, string_agg(n.hash, ''::bytea ORDER BY n.idx)
FROM merkle_nodes n JOIN chain_heads h ON h.tenant = n.tenant
WHERE n.level % 8 = 0 AND n.level > 0 AND n.idx < ((h.seq >> n.level) / 256) * 256
GROUP BY n.tenant, n.level, n.idx / 256
HAVING count(*) = 256;

-- The head's partial tiles, lowest level first, replace the frontier (whose subtrees all lie
-- inside them): level 0's from the events after the last full tile, the others from the nodes.
ALTER TABLE chain_heads ADD COLUMN partial_tiles BYTEA NOT NULL DEFAULT ''::bytea;
UPDATE chain_heads SET partial_tiles = coalesce((
    SELECT string_agg(e.leaf_hash, ''::bytea ORDER BY e.seq)
    FROM events e
    WHERE e.tenant = chain_heads.tenant
        AND e.seq > chain_heads.seq - chain_heads.seq % 256 AND e.seq <= chain_heads.seq
), ''::bytea) || coalesce((
    SELECT string_agg(n.hash, ''::bytea ORDER BY n.level, n.idx)
    FROM merkle_nodes n
    WHERE n.tenant = chain_heads.tenant AND n.level % 8 = 0 AND n.level > 0
        AND n.idx >= ((chain_heads.seq >> n.level) / 256) * 256
        AND n.idx < (chain_heads.seq >> n.level)
), ''::bytea);
ALTER TABLE chain_heads ALTER COLUMN partial_tiles DROP DEFAULT;
ALTER TABLE chain_heads DROP COLUMN frontier;

DROP TABLE merkle_nodes;
