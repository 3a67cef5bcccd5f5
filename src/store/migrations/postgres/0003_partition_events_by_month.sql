-- The events table becomes range-partitioned by `recorded_at`, one partition per UTC month
-- (`events_y2026m11`), so that retention can drop a month instead of deleting rows.
-- See docs/write-path.md, "Monthly partitions (PostgreSQL)". Runs in one transaction: the old
-- table is renamed, its rows copied into the partitions, and then dropped.

ALTER TABLE events RENAME TO events_unpartitioned;
-- Free the index and constraint names the new table reuses.
ALTER TABLE events_unpartitioned DROP CONSTRAINT events_pkey, DROP CONSTRAINT events_id_key,
    DROP CONSTRAINT events_action_check, DROP CONSTRAINT events_outcome_check,
    DROP CONSTRAINT events_event_data_check;
DROP INDEX events_idempotency, events_user_identity, events_event_type, events_entity,
    events_occurred_at, events_amends, events_event_data, events_action, events_entity_id,
    events_property, events_source, events_ip, events_outcome, events_recorded_by;

CREATE TABLE events (
    tenant          TEXT        NOT NULL,
    seq             BIGINT      NOT NULL,
    id              UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    user_identity   TEXT        NOT NULL,
    action          TEXT        CHECK (action IN ('create', 'read', 'update', 'delete')),
    entity          TEXT,
    entity_id       TEXT,
    property        TEXT,
    source          TEXT,
    ip              TEXT,
    outcome         TEXT        CHECK (outcome IN ('success', 'failure')),
    occurred_at     TIMESTAMPTZ NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    recorded_by     TEXT        NOT NULL,
    event_data      JSONB       CHECK (event_data IS NULL OR jsonb_typeof(event_data) = 'object'),
    event_data_hash BYTEA,
    redacted_at     TIMESTAMPTZ,
    idempotency_key TEXT,
    amends          UUID,
    amends_hash     BYTEA,
    request_hash    BYTEA       NOT NULL,
    leaf_hash       BYTEA       NOT NULL,
    prev_hash       BYTEA       NOT NULL,
    hash            BYTEA       NOT NULL
) PARTITION BY RANGE (recorded_at);

-- Adds the partition for the UTC month starting at `month` unless a table of that name exists;
-- true if it created one. The service calls it for the months ahead and when an insert finds
-- no partition. Instances may call it at once: the advisory lock serialises them, and the
-- catalog is read after the lock is granted, so the later caller sees the earlier one's table.
-- CREATE + ATTACH rather than CREATE … PARTITION OF: ATTACH takes only SHARE UPDATE EXCLUSIVE on
-- `events`, so reads and appends go on while a month is added.
CREATE FUNCTION events_add_partition(month DATE) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    first DATE := date_trunc('month', month)::date;
    name  TEXT := to_char(first, '"events_y"YYYY"m"MM');
BEGIN
    -- 'auditor.events_add_partition' as a number: any constant works if nothing else uses it.
    PERFORM pg_advisory_xact_lock(7356128095540915331);
    IF EXISTS (SELECT 1 FROM pg_class
               WHERE relname = name AND relnamespace = current_schema()::regnamespace) THEN
        RETURN false;
    END IF;
    -- Statistics refreshed every 1 % of growth instead of 10 %: the current month only grows,
    -- and with stale counts the planner misjudges how many rows a filter keeps (it ANDed the
    -- tenant index into a selective `event_data` lookup, 29 ms instead of 1).
    EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS) '
                   'WITH (autovacuum_analyze_scale_factor = 0.01)', name);
    -- Bounds spelled out in UTC, whatever the session's TimeZone and DateStyle.
    EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name,
                   to_char(first, 'YYYY-MM-DD') || ' 00:00:00+00',
                   to_char(first + INTERVAL '1 month', 'YYYY-MM-DD') || ' 00:00:00+00');
    -- Row triggers are cloned from `events`; statement-level TRUNCATE triggers are not, and a
    -- partition can be truncated by name.
    EXECUTE format('CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION reject_change()', name);
    RETURN true;
END;
$$;

-- A partition for every month that holds events, and for this month and the next three (the
-- service keeps that many ahead; see PARTITION_MONTHS_AHEAD in src/store/postgres.rs).
SELECT events_add_partition(month)
FROM (SELECT DISTINCT date_trunc('month', recorded_at AT TIME ZONE 'UTC')::date AS month
      FROM events_unpartitioned
      UNION
      SELECT (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => ahead))::date
      FROM generate_series(0, 3) AS ahead) AS months
ORDER BY month;

INSERT INTO events (tenant, seq, id, event_type, user_identity, action, entity, entity_id,
                    property, source, ip, outcome, occurred_at, recorded_at, recorded_by,
                    event_data, event_data_hash, redacted_at, idempotency_key, amends, amends_hash,
                    request_hash, leaf_hash, prev_hash, hash)
SELECT tenant, seq, id, event_type, user_identity, action, entity, entity_id, property, source,
       ip, outcome, occurred_at, recorded_at, recorded_by, event_data, event_data_hash,
       redacted_at, idempotency_key, amends, amends_hash, request_hash, leaf_hash, prev_hash, hash
FROM events_unpartitioned;

-- Idempotency keys stay unique per tenant across all months here: a unique index on `events`
-- would have to include `recorded_at`. Filled in the same statement as the events it names;
-- `Store::append` looks keys up here, then reads the event by its primary key.
CREATE TABLE idempotency_keys (
    tenant          TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    seq             BIGINT      NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);
INSERT INTO idempotency_keys (tenant, idempotency_key, seq, recorded_at)
SELECT tenant, idempotency_key, seq, recorded_at FROM events_unpartitioned
WHERE idempotency_key IS NOT NULL;

DROP TABLE events_unpartitioned;

-- Built after the copy (faster than maintaining them row by row); each creates one index per
-- partition, and partitions added later get theirs when attached.
-- `seq` is unique per tenant because appenders hold the tenant's chain-head row (and verify
-- would catch a duplicate), but a unique constraint on a partitioned table must include the
-- partition key.
ALTER TABLE events ADD PRIMARY KEY (tenant, seq, recorded_at);
-- Ids are server-generated UUIDv7 (48-bit time, 74 random bits): unique without a constraint,
-- which a partitioned table could not enforce across months anyway.
CREATE INDEX events_id ON events (id);
CREATE INDEX events_idempotency ON events (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_user_identity ON events (tenant, user_identity, seq);
CREATE INDEX events_event_type ON events (tenant, event_type, seq);
CREATE INDEX events_entity ON events (tenant, entity, entity_id, seq);
CREATE INDEX events_occurred_at ON events (tenant, occurred_at);
CREATE INDEX events_amends ON events (tenant, amends) WHERE amends IS NOT NULL;
CREATE INDEX events_event_data ON events USING GIN (event_data jsonb_path_ops);
CREATE INDEX events_action ON events (tenant, action, seq) WHERE action IS NOT NULL;
CREATE INDEX events_entity_id ON events (tenant, entity_id, seq) WHERE entity_id IS NOT NULL;
CREATE INDEX events_property ON events (tenant, property, seq) WHERE property IS NOT NULL;
CREATE INDEX events_source ON events (tenant, source, seq) WHERE source IS NOT NULL;
CREATE INDEX events_ip ON events (tenant, ip, seq) WHERE ip IS NOT NULL;
CREATE INDEX events_outcome ON events (tenant, outcome, seq) WHERE outcome IS NOT NULL;
CREATE INDEX events_recorded_by ON events (tenant, recorded_by, seq);

-- Row triggers on a partitioned table are cloned to every partition, present and future, so
-- `UPDATE`/`DELETE` are refused on `events_y…` too. TRUNCATE: here for `events`, and per
-- partition in events_add_partition.
CREATE TRIGGER events_are_never_changed BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_allow_only_redaction();
CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
CREATE TRIGGER idempotency_keys_are_never_changed
    BEFORE UPDATE OR DELETE OR TRUNCATE ON idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
