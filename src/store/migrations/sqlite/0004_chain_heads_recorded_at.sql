-- Each tenant's chain head also keeps the `recorded_at` of its last event, so that an append can
-- keep `recorded_at` from going backwards when the clock is stepped back: the next commit time is
-- at least this one (`CommitClock` in src/store/assemble.rs). Microseconds since the epoch, as
-- in `events`; NULL until the tenant's first event.
ALTER TABLE chain_heads ADD COLUMN recorded_at INTEGER;

-- Logs that already exist: the head's own event, found by the primary key.
UPDATE chain_heads SET recorded_at = (
    SELECT events.recorded_at FROM events
    WHERE events.tenant = chain_heads.tenant AND events.seq = chain_heads.seq
);
