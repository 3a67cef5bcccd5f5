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
    idempotency_key TEXT,
    amends          BLOB,
    request_hash    BLOB    NOT NULL,
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

CREATE TRIGGER events_are_never_updated BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the events table is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER events_are_never_deleted BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the events table is append-only: DELETE is not allowed');
END;

-- Where each tenant's chain ends; the writer holds it while it appends.
CREATE TABLE chain_heads (
    tenant TEXT    PRIMARY KEY,
    seq    INTEGER NOT NULL,
    hash   BLOB    NOT NULL
);

CREATE TABLE users (
    name          TEXT    PRIMARY KEY,
    password_hash TEXT    NOT NULL, -- argon2id, PHC string
    role          TEXT    NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    created_at    INTEGER NOT NULL
);
