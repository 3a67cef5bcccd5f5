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
    idempotency_key TEXT,
    amends          UUID,
    request_hash    BYTEA       NOT NULL,
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

CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_are_never_changed BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_reject_change();
CREATE TRIGGER events_are_never_truncated BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();

-- Where each tenant's chain ends; appenders lock its row, which serialises them across instances.
CREATE TABLE chain_heads (
    tenant TEXT   PRIMARY KEY,
    seq    BIGINT NOT NULL,
    hash   BYTEA  NOT NULL
);

CREATE TABLE users (
    name          TEXT        PRIMARY KEY,
    password_hash TEXT        NOT NULL, -- argon2id, PHC string
    role          TEXT        NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
