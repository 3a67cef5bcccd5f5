-- The audit log: one row per event, never updated or deleted.
CREATE TABLE events (
    tenant          TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    id              BLOB    NOT NULL UNIQUE,
    event_type      TEXT    NOT NULL,
    user_identity   TEXT    NOT NULL,
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
    event_data_hash BLOB,   -- kept when event_data is redacted, so the leaf still verifies
    redacted_at     INTEGER,
    idempotency_key TEXT,
    amends          BLOB,
    amends_hash     BLOB,
    request_hash    BLOB    NOT NULL,
    leaf_hash       BLOB    NOT NULL,
    prev_hash       BLOB    NOT NULL,
    hash            BLOB    NOT NULL,
    PRIMARY KEY (tenant, seq)
);

CREATE UNIQUE INDEX events_idempotency ON events (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_user_identity ON events (tenant, user_identity, seq);
CREATE INDEX events_event_type ON events (tenant, event_type, seq);
CREATE INDEX events_entity ON events (tenant, entity, entity_id, seq);
CREATE INDEX events_occurred_at ON events (tenant, occurred_at);
CREATE INDEX events_amends ON events (tenant, amends) WHERE amends IS NOT NULL;

-- The one change ever made to a row is a redaction: the payload erased, everything else kept.
CREATE TRIGGER events_are_never_updated BEFORE UPDATE ON events
WHEN NOT (
    OLD.redacted_at IS NULL AND NEW.redacted_at IS NOT NULL
        AND OLD.event_data IS NOT NULL AND NEW.event_data IS NULL
        AND NEW.tenant IS OLD.tenant
        AND NEW.seq IS OLD.seq
        AND NEW.id IS OLD.id
        AND NEW.event_type IS OLD.event_type
        AND NEW.user_identity IS OLD.user_identity
        AND NEW.action IS OLD.action
        AND NEW.entity IS OLD.entity
        AND NEW.entity_id IS OLD.entity_id
        AND NEW.property IS OLD.property
        AND NEW.source IS OLD.source
        AND NEW.ip IS OLD.ip
        AND NEW.outcome IS OLD.outcome
        AND NEW.occurred_at IS OLD.occurred_at
        AND NEW.recorded_at IS OLD.recorded_at
        AND NEW.recorded_by IS OLD.recorded_by
        AND NEW.event_data_hash IS OLD.event_data_hash
        AND NEW.idempotency_key IS OLD.idempotency_key
        AND NEW.amends IS OLD.amends
        AND NEW.amends_hash IS OLD.amends_hash
        AND NEW.request_hash IS OLD.request_hash
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

-- Where each tenant's chain ends, and the Merkle frontier (complete subtree hashes, largest
-- first) of its tree; the writer holds it while it appends.
CREATE TABLE chain_heads (
    tenant   TEXT    PRIMARY KEY,
    seq      INTEGER NOT NULL,
    hash     BLOB    NOT NULL,
    frontier BLOB    NOT NULL
);

-- Interior nodes of each tenant's Merkle tree (level >= 1; level 0 is events.leaf_hash), so a
-- proof reads O(log n) rows.
CREATE TABLE merkle_nodes (
    tenant TEXT    NOT NULL,
    level  INTEGER NOT NULL,
    idx    INTEGER NOT NULL,
    hash   BLOB    NOT NULL,
    PRIMARY KEY (tenant, level, idx)
) WITHOUT ROWID;

-- Signed tree heads, as C2SP signed notes.
CREATE TABLE checkpoints (
    tenant    TEXT    NOT NULL,
    tree_size INTEGER NOT NULL,
    root_hash BLOB    NOT NULL,
    issued_at INTEGER NOT NULL,
    note      TEXT    NOT NULL,
    PRIMARY KEY (tenant, tree_size)
);

CREATE TRIGGER merkle_nodes_are_never_changed BEFORE UPDATE ON merkle_nodes
BEGIN
    SELECT RAISE(ABORT, 'merkle_nodes is append-only');
END;
CREATE TRIGGER merkle_nodes_are_never_deleted BEFORE DELETE ON merkle_nodes
BEGIN
    SELECT RAISE(ABORT, 'merkle_nodes is append-only');
END;
CREATE TRIGGER checkpoints_are_never_changed BEFORE UPDATE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints is append-only');
END;
CREATE TRIGGER checkpoints_are_never_deleted BEFORE DELETE ON checkpoints
BEGIN
    SELECT RAISE(ABORT, 'checkpoints is append-only');
END;

CREATE TABLE users (
    name          TEXT    PRIMARY KEY,
    password_hash TEXT    NOT NULL, -- argon2id, PHC string
    role          TEXT    NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    created_at    INTEGER NOT NULL
);
