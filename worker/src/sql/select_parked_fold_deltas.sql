-- Parked deltas for `fold-deltas list`, oldest first.
SELECT id, partition, created_at::text AS created_at, parked_at::text AS parked_at, format, kind,
       sqlstate, reason, length(changes)::int8 AS bytes
FROM fold_delta_parked
ORDER BY id
LIMIT $1
