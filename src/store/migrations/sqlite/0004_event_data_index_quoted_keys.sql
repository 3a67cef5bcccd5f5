-- `event_data_index.path` becomes unambiguous, so that a query can name a key holding a dot.
-- Until now a path was its keys joined by `.`: `{"a.b": {"c": 1}}` and `{"a": {"b": {"c": 1}}}`
-- both gave `a.b.c`. From now on a key that is empty or holds `.` or `"` is written as its JSON
-- string literal (`"a.b".c`); every other key is written as it is, as before, so the rows of
-- ordinary payloads stay as they are (`push_index_key` in src/store/sqlite.rs).
--
-- This migration rewrites the rows of the events whose rows may be wrong: any key, reached
-- through objects, that is now quoted, or whose row 0003's backfill derived wrongly from
-- `json_tree`'s `fullkey` (which keeps the escapes of `\`, `"` and control characters and
-- whose filter on `[` also dropped keys holding a `[`). It also deletes every row left for a
-- redacted event, which 0003's trigger missed for such keys.

-- A redaction now deletes its rows in the same transaction, computed in Rust by the function
-- that the appender uses (`erase_payload`): the view could not derive the new encoding without
-- a recursive query, which cannot be filtered down to the one event a trigger handles.
DROP TRIGGER event_data_index_on_redaction;
DROP VIEW event_data_leaves;

CREATE TEMP TABLE event_data_reindexed (
    tenant TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (tenant, seq)
) WITHOUT ROWID;

-- Events with such a key. The GLOB only skips payloads that cannot have one: such a key puts a
-- `.`, `[`, `\` (an escape) or `""` (the empty key) into the payload's JSON text.
INSERT INTO event_data_reindexed (tenant, seq)
WITH RECURSIVE member (tenant, seq, key, type, value) AS (
    SELECT events.tenant, events.seq, m.key, m.type, m.value
    FROM events, json_each(events.event_data) AS m
    WHERE events.event_data IS NOT NULL
      AND (events.event_data GLOB '*[.[\]*' OR instr(events.event_data, '""') > 0)
    UNION ALL
    SELECT member.tenant, member.seq, m.key, m.type, m.value
    FROM member, json_each(member.value) AS m
    WHERE member.type = 'object'
)
SELECT DISTINCT tenant, seq FROM member
WHERE key = '' OR instr(key, '.') > 0 OR instr(key, '[') > 0
   OR json_quote(key) <> '"' || key || '"';

INSERT INTO event_data_reindexed (tenant, seq)
SELECT tenant, seq FROM events WHERE redacted_at IS NOT NULL;

-- One pass over the table: it has no index by `seq`.
DELETE FROM event_data_index
WHERE (tenant, seq) IN (SELECT tenant, seq FROM event_data_reindexed);

-- The rows `indexed_leaves` computes, for the payloads that are still there. `value` as in
-- 0003: SQLite's own typing of the leaf, `null`/`true`/`false` as blobs, strings over 128
-- characters as the blob of their first 128.
INSERT OR IGNORE INTO event_data_index (tenant, path, value, seq)
WITH RECURSIVE member (tenant, seq, path, type, atom, value) AS (
    SELECT events.tenant, events.seq,
           CASE WHEN m.key = '' OR instr(m.key, '.') > 0 OR instr(m.key, '"') > 0
                THEN json_quote(m.key) ELSE m.key END,
           m.type, m.atom, m.value
    FROM event_data_reindexed AS r
    JOIN events ON events.tenant = r.tenant AND events.seq = r.seq,
         json_each(events.event_data) AS m
    WHERE events.event_data IS NOT NULL
    UNION ALL
    SELECT member.tenant, member.seq,
           member.path || '.' ||
           CASE WHEN m.key = '' OR instr(m.key, '.') > 0 OR instr(m.key, '"') > 0
                THEN json_quote(m.key) ELSE m.key END,
           m.type, m.atom, m.value
    FROM member, json_each(member.value) AS m
    WHERE member.type = 'object'
)
SELECT tenant, path,
       CASE type
           WHEN 'null' THEN CAST('null' AS BLOB)
           WHEN 'true' THEN CAST('true' AS BLOB)
           WHEN 'false' THEN CAST('false' AS BLOB)
           WHEN 'text' THEN
               CASE WHEN length(atom) > 128 THEN CAST(substr(atom, 1, 128) AS BLOB)
                    ELSE atom END
           ELSE atom
       END,
       seq
FROM member
WHERE type NOT IN ('object', 'array');

DROP TABLE event_data_reindexed;
