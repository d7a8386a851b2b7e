-- Removes up to $2 deltas of the partitions this transaction holds, of a
-- format this binary reads (<= $3) and, during a drain, no newer than $4, and
-- returns them with their age. The deletion commits with their effect, so a
-- delta is folded exactly once; a rolled-back fold leaves them in place.
DELETE FROM fold_delta d
WHERE d.id IN (
    SELECT id FROM fold_delta
    WHERE partition = ANY($1::int2[]) AND format <= $3 AND ($4::int8 IS NULL OR id <= $4)
    ORDER BY id LIMIT $2
)
RETURNING d.id, d.partition, d.created_at::text AS created_at, d.format, d.changes,
          extract(epoch FROM clock_timestamp() - d.created_at)::float8 AS age_seconds
