-- Postings (see `store/sqlite/postings.rs`): one table finds every equality filter's events,
-- written in runs of many events rather than at every append, in place of one B-tree per
-- field and `event_data_index`, which made each append dirty a random page of each.
-- Every existing event's postings go into one run per tenant; `id`, `idempotency_key`,
-- `amends` and `occurred_at` keep their own indexes.

CREATE TABLE posting_runs (
    id        INTEGER PRIMARY KEY,
    tenant    TEXT    NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    -- flushing: being written from the tail; building: being merged from live runs (neither
    -- is read yet); retired: replaced, or a flush a stop interrupted, being deleted
    state     TEXT    NOT NULL CHECK (state IN ('flushing', 'building', 'live', 'retired'))
);
CREATE INDEX posting_runs_by_tenant ON posting_runs (tenant, first_seq);

CREATE TABLE postings (
    run   INTEGER NOT NULL,
    field TEXT    NOT NULL, -- a field's name, or `event_data.` and a leaf's path
    value ANY     NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (run, field, value, seq)
) STRICT, WITHOUT ROWID;

INSERT INTO posting_runs (tenant, first_seq, last_seq, state)
SELECT tenant, 1, seq, 'live' FROM chain_heads WHERE seq > 0;

-- A real that is a whole number within the i64 range is stored as that integer, as the
-- appender stores it (`PostingValue`); SQLite finds it by either.
INSERT INTO postings (run, field, value, seq)
SELECT r.id, p.field,
       CASE WHEN typeof(p.value) = 'real' AND p.value >= -9223372036854775808.0
                 AND p.value < 9223372036854775808.0 AND p.value = CAST(p.value AS INTEGER)
            THEN CAST(p.value AS INTEGER) ELSE p.value END,
       p.seq
FROM posting_runs AS r
JOIN (
    SELECT tenant, 'event_type' AS field, event_type AS value, seq FROM events
    UNION ALL SELECT tenant, 'user_identity', user_identity, seq FROM events
    UNION ALL SELECT tenant, 'action', action, seq FROM events WHERE action IS NOT NULL
    UNION ALL SELECT tenant, 'entity', entity, seq FROM events WHERE entity IS NOT NULL
    UNION ALL SELECT tenant, 'entity_id', entity_id, seq FROM events WHERE entity_id IS NOT NULL
    UNION ALL SELECT tenant, 'property', property, seq FROM events WHERE property IS NOT NULL
    UNION ALL SELECT tenant, 'source', source, seq FROM events WHERE source IS NOT NULL
    UNION ALL SELECT tenant, 'ip', ip, seq FROM events WHERE ip IS NOT NULL
    UNION ALL SELECT tenant, 'outcome', outcome, seq FROM events WHERE outcome IS NOT NULL
    UNION ALL SELECT tenant, 'recorded_by', recorded_by, seq FROM events
    UNION ALL SELECT tenant, 'event_data.' || path, value, seq FROM event_data_index
) AS p ON p.tenant = r.tenant
ORDER BY 1, 2, 3, 4;

DROP TABLE event_data_index;
DROP INDEX events_user_identity;
DROP INDEX events_event_type;
DROP INDEX events_entity;
DROP INDEX events_action;
DROP INDEX events_entity_id;
DROP INDEX events_property;
DROP INDEX events_source;
DROP INDEX events_ip;
DROP INDEX events_outcome;
DROP INDEX events_recorded_by;
