-- Each checkpoint names the one signed before it (docs/integrity.md, "Checkpoints that vouch for
-- each other"). `predecessor_size` is that checkpoint's tree size, 0 for a tenant's first, and
-- NULL for those signed before; at most one checkpoint follows each, so two instances signing
-- at once cannot both name the same predecessor (the second signs again after the first).
ALTER TABLE checkpoints ADD COLUMN predecessor_size INT8;
CREATE UNIQUE INDEX checkpoints_one_successor ON checkpoints (tenant, predecessor_size);
