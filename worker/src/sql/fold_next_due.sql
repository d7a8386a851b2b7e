-- Milliseconds until the first partition with deltas this binary can fold
-- (format <= $2) is due again (last folded $1 milliseconds ago:
-- claim_fold_partitions.sql), 0 or less when one is due now, NULL when no
-- partition has deltas. A fold loop that found nothing to take sleeps until
-- then.
SELECT ceil(extract(epoch FROM min(p.folded_at) + $1 * interval '1 millisecond' - now()) * 1000)::int8
FROM fold_partition p
WHERE EXISTS (SELECT 1 FROM fold_delta d WHERE d.partition = p.partition AND d.format <= $2)
