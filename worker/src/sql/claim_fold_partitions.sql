-- A folder takes up to $1 partitions that have deltas it can fold (format
-- <= $2, id <= $3 when a drain bounds it), longest-unfolded first. With $4
-- (FOLD_INTERVAL_MS, the fold loop), only partitions last folded at least $4
-- milliseconds ago: each partition is folded at most that often however many
-- processes fold, so the deltas of that window merge into one row write per
-- key. SKIP LOCKED: a partition another folder holds is skipped, never waited
-- for; the row lock is the ownership and ends with the transaction. A row
-- another folder just folded is checked again once locked, with its new
-- folded_at.
SELECT p.partition
FROM fold_partition p
WHERE EXISTS (
    SELECT 1 FROM fold_delta d
    WHERE d.partition = p.partition AND d.format <= $2 AND ($3::int8 IS NULL OR d.id <= $3)
)
  AND ($4::int8 IS NULL OR p.folded_at <= now() - $4 * interval '1 millisecond')
ORDER BY p.folded_at, p.partition
LIMIT $1
FOR UPDATE OF p SKIP LOCKED
