-- Each tenant's events are one contiguous range of the table's own B-tree: the rowid, `key`,
-- is the tenant's number (`tenant_numbers`) shifted left by 40 bits, or-ed with the event's
-- `seq`. An event found by `seq` (each event a query's postings name) or a tenant's events in
-- `seq` order (export, verify) are then one descent of the table, not one of the
-- `(tenant, seq)` index and one of the table, and an append writes one B-tree fewer. The table
-- is rebuilt (its rows copied in key order), with its indexes and triggers.

-- A tenant's number, given at its first append and never changed (1 to 2^23 - 1; `seq` up to
-- 2^40 - 1).
CREATE TABLE tenant_numbers (
    tenant TEXT    PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE CHECK (number BETWEEN 1 AND 8388607)
) STRICT;

INSERT INTO tenant_numbers (tenant, number)
SELECT tenant, row_number() OVER (ORDER BY tenant)
FROM (SELECT tenant FROM chain_heads UNION SELECT DISTINCT tenant FROM events);

CREATE TABLE events_v3 (
    key             INTEGER PRIMARY KEY, -- tenant_numbers.number << 40 | seq
    tenant          TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    id              BLOB    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    user_identity   TEXT,   -- NULL once erased
    action          TEXT    CHECK (action IN ('create', 'read', 'update', 'delete')),
    entity          TEXT,
    entity_id       TEXT,
    property        TEXT,
    source          TEXT,
    ip              TEXT,
    outcome         TEXT    CHECK (outcome IN ('success', 'failure')),
    occurred_at     INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    recorded_at     INTEGER NOT NULL,
    recorded_by     TEXT    NOT NULL,
    event_data      TEXT    CHECK (event_data IS NULL OR json_type(event_data) = 'object'),
    event_data_hash BLOB,   -- leaf version 1: kept when event_data is erased
    redacted_at     INTEGER, -- when the latest erasure of the event's fields committed
    idempotency_key TEXT,
    amends          BLOB,
    amends_hash     BLOB,
    request_hash    BLOB    NOT NULL,
    salt_secret     BLOB,
    erased          TEXT    CHECK (erased IS NULL OR json_type(erased) = 'object'),
    leaf_version    INTEGER NOT NULL DEFAULT 1 CHECK (leaf_version IN (1, 2)),
    leaf_hash       BLOB    NOT NULL,
    prev_hash       BLOB    NOT NULL,
    hash            BLOB    NOT NULL,
    CHECK (seq BETWEEN 1 AND 1099511627775 AND key & 1099511627775 = seq)
);

INSERT INTO events_v3 (key, tenant, seq, id, event_type, user_identity, action, entity,
    entity_id, property, source, ip, outcome, occurred_at, recorded_at, recorded_by, event_data,
    event_data_hash, redacted_at, idempotency_key, amends, amends_hash, request_hash,
    salt_secret, erased, leaf_version, leaf_hash, prev_hash, hash)
SELECT (numbers.number << 40) | events.seq, events.tenant, events.seq, events.id,
    events.event_type, events.user_identity, events.action, events.entity, events.entity_id,
    events.property, events.source, events.ip, events.outcome, events.occurred_at,
    events.recorded_at, events.recorded_by, events.event_data, events.event_data_hash,
    events.redacted_at, events.idempotency_key, events.amends, events.amends_hash,
    events.request_hash, events.salt_secret, events.erased, events.leaf_version,
    events.leaf_hash, events.prev_hash, events.hash
FROM events JOIN tenant_numbers AS numbers ON numbers.tenant = events.tenant
ORDER BY numbers.number, events.seq;

DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;

CREATE UNIQUE INDEX events_idempotency ON events (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_occurred_at ON events (tenant, occurred_at);
CREATE INDEX events_amends ON events (tenant, amends) WHERE amends IS NOT NULL;

-- The one change ever made to a row is an erasure: personal fields (and the secret) deleted,
-- `erased` written, `redacted_at` moved forward; every other column kept.
CREATE TRIGGER events_are_never_updated BEFORE UPDATE ON events
WHEN NOT (
    NEW.redacted_at IS NOT NULL AND (OLD.redacted_at IS NULL OR NEW.redacted_at >= OLD.redacted_at)
        AND (NEW.user_identity IS OLD.user_identity OR NEW.user_identity IS NULL)
        AND (NEW.entity_id IS OLD.entity_id OR NEW.entity_id IS NULL)
        AND (NEW.property IS OLD.property OR NEW.property IS NULL)
        AND (NEW.ip IS OLD.ip OR NEW.ip IS NULL)
        AND (NEW.event_data IS OLD.event_data OR NEW.event_data IS NULL)
        AND (NEW.idempotency_key IS OLD.idempotency_key OR NEW.idempotency_key IS NULL)
        AND (NEW.salt_secret IS OLD.salt_secret OR NEW.salt_secret IS NULL)
        AND (NEW.erased IS OLD.erased OR NEW.erased IS NOT NULL)
        AND NEW.key IS OLD.key
        AND NEW.tenant IS OLD.tenant
        AND NEW.seq IS OLD.seq
        AND NEW.id IS OLD.id
        AND NEW.event_type IS OLD.event_type
        AND NEW.action IS OLD.action
        AND NEW.entity IS OLD.entity
        AND NEW.source IS OLD.source
        AND NEW.outcome IS OLD.outcome
        AND NEW.occurred_at IS OLD.occurred_at
        AND NEW.recorded_at IS OLD.recorded_at
        AND NEW.recorded_by IS OLD.recorded_by
        AND NEW.event_data_hash IS OLD.event_data_hash
        AND NEW.amends IS OLD.amends
        AND NEW.amends_hash IS OLD.amends_hash
        AND NEW.request_hash IS OLD.request_hash
        AND NEW.leaf_version IS OLD.leaf_version
        AND NEW.leaf_hash IS OLD.leaf_hash
        AND NEW.prev_hash IS OLD.prev_hash
        AND NEW.hash IS OLD.hash
)
BEGIN
    SELECT RAISE(ABORT, 'the events table is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER events_are_never_deleted BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the events table is append-only: DELETE is not allowed');
END;
