-- An index for `event_data.<path>=value` queries, which otherwise parse the JSON of every row of
-- the tenant. One row per scalar leaf of each event's `event_data` that is reached through
-- objects only (a query never looks inside an array), keyed so that a path query reads its
-- matches in `seq` order: `WHERE tenant = ? AND path = ? AND value = ? AND seq > ?`.
--
-- This table is derived data, not the audit record: it carries no append-only trigger, and it
-- can be dropped and rebuilt from `events` at any time (the INSERT at the end of this file).
-- Every value in it is rechecked against `events.event_data` by the query, so a stray row can
-- widen the candidates but never the result.
--
-- `value` keeps SQLite's own typing of the leaf, so that it equals a bound query value exactly
-- when `json_extract(event_data, path)` does: an integer and a real compare numerically (1 = 1.0)
-- and text never equals a number. `null`, `true` and `false` are the blobs 'null', 'true' and
-- 'false', which equal no number and no text. A string longer than 128 characters is stored as
-- the blob of its first 128 characters (appender and query convert values alike, in Rust), which
-- bounds the size of a row; the recheck sorts out strings that share such a prefix. STRICT with ANY keeps
-- each value's type as it is (a plain table's column affinity would turn the text '1' into 1).
CREATE TABLE event_data_index (
    tenant TEXT    NOT NULL,
    path   TEXT    NOT NULL, -- dotted: `a.b` for {"a": {"b": ...}}
    value  ANY     NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (tenant, path, value, seq)
) STRICT, WITHOUT ROWID;

-- The definition of the index rows, used by the backfill below and by the redaction trigger.
-- `fullkey` is `$.a."b-c"` (keys other than letters and digits are quoted): with the quotes
-- removed it is the dotted path a query names. Keys holding `.` or `"` make paths no query can
-- name unambiguously; their rows are harmless (the recheck rejects them) and rare, and filtering
-- them out would cost more than it saves. Leaves inside arrays (`[` in the key) are skipped.
CREATE VIEW event_data_leaves (tenant, path, value, seq) AS
SELECT events.tenant,
       substr(replace(leaf.fullkey, '"', ''), 3),
       CASE leaf.type
           WHEN 'null' THEN CAST('null' AS BLOB)
           WHEN 'true' THEN CAST('true' AS BLOB)
           WHEN 'false' THEN CAST('false' AS BLOB)
           WHEN 'text' THEN
               CASE WHEN length(leaf.atom) > 128 THEN CAST(substr(leaf.atom, 1, 128) AS BLOB)
                    ELSE leaf.atom END
           ELSE leaf.atom
       END,
       events.seq
FROM events, json_tree(events.event_data) AS leaf
WHERE leaf.type NOT IN ('object', 'array') AND instr(leaf.fullkey, '[') = 0;

-- New events' rows are written by the appender in the same transaction (`insert_index_rows`
-- in src/store/sqlite.rs computes exactly this view's rows; a trigger running `json_tree` per
-- row tripled the cost of an append).

-- A redaction erases the payload; its index rows go in the same statement, so an erased value
-- can no longer be found by a query. BEFORE, because the rows are derived from the payload
-- that the UPDATE erases; if `events_are_never_updated` refuses the UPDATE, this is undone too.
CREATE TRIGGER event_data_index_on_redaction BEFORE UPDATE OF event_data ON events
WHEN OLD.event_data IS NOT NULL AND NEW.event_data IS NULL
BEGIN
    DELETE FROM event_data_index
    WHERE tenant = OLD.tenant AND seq = OLD.seq AND (path, value) IN (
        SELECT path, value FROM event_data_leaves WHERE tenant = OLD.tenant AND seq = OLD.seq);
END;

-- Backfill the events stored before this migration.
INSERT OR IGNORE INTO event_data_index (tenant, path, value, seq)
SELECT tenant, path, value, seq FROM event_data_leaves;
