-- `entity=` alone is answered by an index over the entity and `seq`; `entity_id=` (with or
-- without `entity=`) by events_entity_id. The old events_entity also held entity_id, so every
-- append put an entry on a random leaf of two indexes for the same value, and a page of WAL
-- each (docs/write-path.md, "Where an append's time goes"). The new index's entries land at
-- the right-hand edge of their entity's range.
DROP INDEX events_entity;
CREATE INDEX events_entity ON events (tenant, entity, seq) WHERE entity IS NOT NULL;
