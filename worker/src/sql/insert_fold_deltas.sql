-- Fold deltas of one batch (ADR 0015): one row per partition the batch
-- touches, insert-only, so no batch ever waits on another's row locks. $3 is
-- the delta format this binary writes (ADR 0019).
INSERT INTO fold_delta (partition, changes, format)
SELECT partition, changes, $3::int2
FROM unnest($1::int2[], $2::text[]) AS d(partition, changes)
