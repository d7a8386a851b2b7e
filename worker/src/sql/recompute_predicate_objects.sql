-- predicate_object for the given pairs (locked by lock_predicate_objects.sql):
-- triple_count over `triple`, sums over those triples' triple_term rows.
-- A pair left without triples is deleted.
WITH pairs AS (
    SELECT DISTINCT predicate_id, object_id FROM unnest($1::text[], $2::text[]) AS p(predicate_id, object_id)
), computed AS (
    SELECT p.predicate_id, p.object_id, count(t.term_id) AS triple_count,
           coalesce(sum(tt.total_position_count), 0) AS total_position_count,
           coalesce(sum(tt.total_market_cap), 0) AS total_market_cap
    FROM pairs p
    JOIN triple t ON t.predicate_id = p.predicate_id AND t.object_id = p.object_id
    LEFT JOIN triple_term tt ON tt.term_id = t.term_id
    GROUP BY p.predicate_id, p.object_id
), updated AS (
    UPDATE predicate_object po
    SET triple_count = c.triple_count, total_position_count = c.total_position_count,
        total_market_cap = c.total_market_cap
    FROM computed c
    WHERE po.predicate_id = c.predicate_id AND po.object_id = c.object_id
      -- Unchanged rows are not rewritten (no dead rows for nothing).
      AND (po.triple_count, po.total_position_count, po.total_market_cap)
          IS DISTINCT FROM (c.triple_count, c.total_position_count, c.total_market_cap)
)
DELETE FROM predicate_object po
USING pairs p
WHERE po.predicate_id = p.predicate_id AND po.object_id = p.object_id
  AND NOT EXISTS (SELECT 1 FROM computed c WHERE c.predicate_id = p.predicate_id AND c.object_id = p.object_id)
