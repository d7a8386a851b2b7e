-- Moves parked deltas (all when $1 is NULL) back into fold_delta under their
-- own ids and creation times, so that they fold with their partition again
-- (ADR 0019). Returns the ids moved.
WITH moved AS (
    DELETE FROM fold_delta_parked
    WHERE $1::int8[] IS NULL OR id = ANY($1::int8[])
    RETURNING id, partition, created_at, format, changes
)
INSERT INTO fold_delta (id, partition, created_at, format, changes)
OVERRIDING SYSTEM VALUE
SELECT id, partition, created_at, format, changes FROM moved
RETURNING id
