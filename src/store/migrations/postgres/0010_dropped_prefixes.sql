-- Retention drops a whole month partition of `events` once every tenant with events in it has
-- outlived it (docs/integrity.md, "Dropped partitions"). Each drop leaves here, per tenant, what
-- the log needs to verify from its first retained event: the last dropped `seq`, its chain hash,
-- and the Merkle tree's partial tiles at that size (`Frontier::to_bytes`). Rows are only added.
CREATE TABLE dropped_prefixes (
    tenant      TEXT        NOT NULL,
    through_seq BIGINT      NOT NULL,
    chain_hash  BYTEA       NOT NULL,
    frontier    BYTEA       NOT NULL,
    partition   TEXT        NOT NULL,
    dropped_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, through_seq)
);

CREATE TRIGGER dropped_prefixes_are_never_changed
    BEFORE UPDATE OR DELETE OR TRUNCATE ON dropped_prefixes
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();

-- A key's row goes only with the key itself: once an erasure deleted it from its event, or once
-- its event's partition was dropped.
CREATE OR REPLACE FUNCTION idempotency_keys_allow_only_erased() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM events
               WHERE tenant = OLD.tenant AND seq = OLD.seq AND recorded_at = OLD.recorded_at
                 AND idempotency_key IS NULL)
       OR EXISTS (SELECT 1 FROM dropped_prefixes
                  WHERE tenant = OLD.tenant AND through_seq >= OLD.seq) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the idempotency_keys table is append-only: DELETE is not allowed'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
