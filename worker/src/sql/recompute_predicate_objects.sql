-- predicate_object for the given pairs (locked by lock_predicate_objects.sql):
-- triple_count over `triple`, sums over those triples' triple_term rows.
-- A pair left without triples is deleted; an unchanged row is not rewritten.
-- Each pair is computed from index lookups (LATERAL), so the cost follows the
-- number of pairs, not the size of `triple`.
WITH pairs AS (
    SELECT DISTINCT predicate_id, object_id FROM unnest($1::text[], $2::text[]) AS p(predicate_id, object_id)
), computed AS (
    SELECT p.predicate_id, p.object_id, s.triple_count, s.total_position_count, s.total_market_cap
    FROM pairs p
    CROSS JOIN LATERAL (
        SELECT count(t.term_id) AS triple_count,
               coalesce(sum(tt.total_position_count), 0) AS total_position_count,
               coalesce(sum(tt.total_market_cap), 0) AS total_market_cap
        FROM triple t
        LEFT JOIN triple_term tt ON tt.term_id = t.term_id
        WHERE t.predicate_id = p.predicate_id AND t.object_id = p.object_id
    ) s
), updated AS (
    UPDATE predicate_object po
    SET triple_count = c.triple_count, total_position_count = c.total_position_count,
        total_market_cap = c.total_market_cap
    FROM computed c
    WHERE po.predicate_id = c.predicate_id AND po.object_id = c.object_id
      AND c.triple_count > 0
      AND (po.triple_count, po.total_position_count, po.total_market_cap)
          IS DISTINCT FROM (c.triple_count, c.total_position_count, c.total_market_cap)
)
DELETE FROM predicate_object po
USING computed c
WHERE po.predicate_id = c.predicate_id AND po.object_id = c.object_id AND c.triple_count = 0
