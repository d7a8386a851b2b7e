-- For commands that must see everything folded (dead-letter replay): every
-- partition with deltas of a format <= $1, waiting for folders that hold
-- one. Locked in partition order; folders never wait on these rows, so no
-- deadlock.
SELECT p.partition
FROM fold_partition p
WHERE EXISTS (SELECT 1 FROM fold_delta d WHERE d.partition = p.partition AND d.format <= $1)
ORDER BY p.partition
FOR UPDATE OF p
