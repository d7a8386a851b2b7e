-- Locks (creating if needed) the predicate_object rows about to be
-- recomputed, in key order. Every analytics transaction touching a triple locks
-- its pairs first, so two transactions never recompute the same triple or
-- pair at once, and the recomputation statements that follow see the other's
-- committed work (no stale sums under READ COMMITTED).
INSERT INTO predicate_object AS po (predicate_id, object_id, triple_count, total_position_count, total_market_cap)
SELECT DISTINCT p.predicate_id, p.object_id, 0, 0, 0
FROM unnest($1::text[], $2::text[]) AS p(predicate_id, object_id)
ORDER BY p.predicate_id, p.object_id
ON CONFLICT (predicate_id, object_id) DO UPDATE SET triple_count = po.triple_count
WHERE false
