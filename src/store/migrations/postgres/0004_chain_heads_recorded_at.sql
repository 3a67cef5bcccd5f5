-- Each tenant's chain head also keeps the `recorded_at` of its last event, so that an append can
-- keep `recorded_at` from going backwards when the clock is stepped back, or runs behind another
-- instance's: the next commit time is at least this one (`CommitClock` in
-- src/store/assemble.rs), read with the row locked FOR UPDATE like the rest of the head. NULL
-- until the tenant's first event (`lock_head` creates the row at seq 0).
ALTER TABLE chain_heads ADD COLUMN recorded_at TIMESTAMPTZ;

-- Logs that already exist: the head's own event. `events` is partitioned by `recorded_at`, which
-- is what is being looked for, so each month's (tenant, seq, recorded_at) primary key index is
-- probed once per tenant; there are few tenants, and this runs once.
UPDATE chain_heads SET recorded_at = events.recorded_at
FROM events
WHERE events.tenant = chain_heads.tenant AND events.seq = chain_heads.seq;

-- From which `seq` on `recorded_at` is kept in order (`auditor verify` checks it from there). A
-- log that existed before this migration may step back in time at earlier events without anyone
-- having touched it (a clock stepped back, instances whose clocks disagreed); a new log is in
-- order from its first event.
ALTER TABLE chain_heads ADD COLUMN recorded_at_ordered_from BIGINT NOT NULL DEFAULT 1;
UPDATE chain_heads SET recorded_at_ordered_from = seq + 1;
