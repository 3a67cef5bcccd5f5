-- Leaf version 2 and erasure (docs/integrity.md, "Leaf version 2" and "Erasure"):
-- * `leaf_version`: 1 for every event recorded before, 2 for new ones;
-- * `salt_secret`: a version 2 event's 256-bit secret, which its commitments' salts derive from;
-- * `erased`: once fields of a version 2 event were erased, their commitments and the other
--   fields' salts;
-- * `user_identity` may be NULL: an erasure deletes it.
-- All three are catalogue changes (a constant default is not written into the rows).
ALTER TABLE events ALTER COLUMN user_identity DROP NOT NULL;
ALTER TABLE events
    ADD COLUMN IF NOT EXISTS salt_secret BYTEA,
    ADD COLUMN IF NOT EXISTS erased JSONB
        CHECK (erased IS NULL OR jsonb_typeof(erased) = 'object'),
    ADD COLUMN IF NOT EXISTS leaf_version INT8 NOT NULL DEFAULT 1
        CHECK (leaf_version IN (1, 2));

-- The one change ever made to a row is an erasure: personal fields (and the secret) deleted,
-- `erased` written, `redacted_at` moved forward; every other column kept.
CREATE OR REPLACE FUNCTION events_allow_only_redaction() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND NEW.redacted_at IS NOT NULL
        AND (OLD.redacted_at IS NULL OR NEW.redacted_at >= OLD.redacted_at)
        AND (NEW.user_identity IS NOT DISTINCT FROM OLD.user_identity OR NEW.user_identity IS NULL)
        AND (NEW.entity_id IS NOT DISTINCT FROM OLD.entity_id OR NEW.entity_id IS NULL)
        AND (NEW.property IS NOT DISTINCT FROM OLD.property OR NEW.property IS NULL)
        AND (NEW.ip IS NOT DISTINCT FROM OLD.ip OR NEW.ip IS NULL)
        AND (NEW.event_data IS NOT DISTINCT FROM OLD.event_data OR NEW.event_data IS NULL)
        AND (NEW.idempotency_key IS NOT DISTINCT FROM OLD.idempotency_key
             OR NEW.idempotency_key IS NULL)
        AND (NEW.salt_secret IS NOT DISTINCT FROM OLD.salt_secret OR NEW.salt_secret IS NULL)
        AND (NEW.erased IS NOT DISTINCT FROM OLD.erased OR NEW.erased IS NOT NULL)
        AND to_jsonb(NEW) - 'user_identity' - 'entity_id' - 'property' - 'ip' - 'event_data'
                - 'redacted_at' - 'idempotency_key' - 'salt_secret' - 'erased'
            = to_jsonb(OLD) - 'user_identity' - 'entity_id' - 'property' - 'ip' - 'event_data'
                - 'redacted_at' - 'idempotency_key' - 'salt_secret' - 'erased'
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- A key's row goes only with the key itself: once an erasure deleted it from its event.
DROP TRIGGER idempotency_keys_are_never_changed ON idempotency_keys;
CREATE TRIGGER idempotency_keys_are_never_changed
    BEFORE UPDATE OR TRUNCATE ON idempotency_keys
    FOR EACH STATEMENT EXECUTE FUNCTION reject_change();
CREATE FUNCTION idempotency_keys_allow_only_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM events
               WHERE tenant = OLD.tenant AND seq = OLD.seq AND recorded_at = OLD.recorded_at
                 AND idempotency_key IS NULL) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the idempotency_keys table is append-only: DELETE is not allowed'
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER idempotency_keys_go_only_when_erased BEFORE DELETE ON idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION idempotency_keys_allow_only_erased();
