-- For commands that must see everything folded (verify, dead-letter replay):
-- every partition with deltas, waiting for folders that hold one. Locked in
-- partition order; folders never wait on these rows, so no deadlock.
SELECT p.partition
FROM fold_partition p
WHERE EXISTS (SELECT 1 FROM fold_delta d WHERE d.partition = p.partition)
ORDER BY p.partition
FOR UPDATE OF p
