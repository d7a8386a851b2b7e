-- Fold deltas of one batch (ADR 0015): one row per partition the batch
-- touches, insert-only, so no batch ever waits on another's row locks.
INSERT INTO fold_delta (partition, changes)
SELECT partition, changes
FROM unnest($1::int2[], $2::text[]) AS d(partition, changes)
