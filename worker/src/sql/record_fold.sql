-- When each partition was last folded, and how many deltas it folded in all.
UPDATE fold_partition p
SET folded_at = now(), folded_deltas = p.folded_deltas + n.deltas
FROM unnest($1::int2[], $2::int8[]) AS n(partition, deltas)
WHERE p.partition = n.partition
