-- A folder takes up to $1 partitions that have deltas it can fold (format
-- <= $2, id <= $3 when a drain bounds it), longest-unfolded first. SKIP
-- LOCKED: a partition another folder holds is skipped, never waited for; the
-- row lock is the ownership and ends with the transaction.
SELECT p.partition
FROM fold_partition p
WHERE EXISTS (
    SELECT 1 FROM fold_delta d
    WHERE d.partition = p.partition AND d.format <= $2 AND ($3::int8 IS NULL OR d.id <= $3)
)
ORDER BY p.folded_at, p.partition
LIMIT $1
FOR UPDATE OF p SKIP LOCKED
