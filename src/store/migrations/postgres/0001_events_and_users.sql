-- The audit log: one row per event, never updated or deleted.
CREATE TABLE events (
    tenant          TEXT        NOT NULL,
    seq             BIGINT      NOT NULL,
    id              UUID        NOT NULL UNIQUE,
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
    event_data_hash BYTEA,      -- kept when event_data is redacted, so the leaf still verifies
    redacted_at     TIMESTAMPTZ,
    idempotency_key TEXT,
    amends          UUID,
    amends_hash     BYTEA,
    request_hash    BYTEA       NOT NULL,
    leaf_hash       BYTEA       NOT NULL,
    prev_hash       BYTEA       NOT NULL,
    hash            BYTEA       NOT NULL,
    PRIMARY KEY (tenant, seq)
);

CREATE UNIQUE INDEX events_idempotency ON events (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_user_identity ON events (tenant, user_identity, seq);
CREATE INDEX events_event_type ON events (tenant, event_type, seq);
CREATE INDEX events_entity ON events (tenant, entity, entity_id, seq);
CREATE INDEX events_occurred_at ON events (tenant, occurred_at);
CREATE INDEX events_amends ON events (tenant, amends) WHERE amends IS NOT NULL;
CREATE INDEX events_event_data ON events USING GIN (event_data jsonb_path_ops);

CREATE FUNCTION reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the % table is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- The one change ever made to a row is a redaction: the payload erased, everything else kept.
CREATE FUNCTION events_allow_only_redaction() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND OLD.redacted_at IS NULL AND NEW.redacted_at IS NOT NULL
        AND OLD.event_data IS NOT NULL AND NEW.event_data IS NULL
        AND to_jsonb(NEW) - 'event_data' - 'redacted_at'
            = to_jsonb(OLD) - 'event_data' - 'redacted_at'
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_are_never_changed BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_allow_only_redaction();
CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();

-- Where each tenant's chain ends, and the Merkle frontier (complete subtree hashes, largest
-- first) of its tree; appenders lock its row, which serialises them across instances.
CREATE TABLE chain_heads (
    tenant   TEXT   PRIMARY KEY,
    seq      BIGINT NOT NULL,
    hash     BYTEA  NOT NULL,
    frontier BYTEA  NOT NULL
);

-- Interior nodes of each tenant's Merkle tree (level >= 1; level 0 is events.leaf_hash), so a
-- proof reads O(log n) rows.
CREATE TABLE merkle_nodes (
    tenant TEXT   NOT NULL,
    level  INT    NOT NULL,
    idx    BIGINT NOT NULL,
    hash   BYTEA  NOT NULL,
    PRIMARY KEY (tenant, level, idx)
);

-- Signed tree heads, as C2SP signed notes.
CREATE TABLE checkpoints (
    tenant    TEXT        NOT NULL,
    tree_size BIGINT      NOT NULL,
    root_hash BYTEA       NOT NULL,
    issued_at TIMESTAMPTZ NOT NULL,
    note      TEXT        NOT NULL,
    PRIMARY KEY (tenant, tree_size)
);

CREATE TRIGGER merkle_nodes_are_never_changed BEFORE UPDATE OR DELETE OR TRUNCATE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
CREATE TRIGGER checkpoints_are_never_changed BEFORE UPDATE OR DELETE OR TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();

CREATE TABLE users (
    name          TEXT        PRIMARY KEY,
    password_hash TEXT        NOT NULL, -- argon2id, PHC string
    role          TEXT        NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
