-- subject_predicate for the given pairs (locked by lock_subject_predicates.sql),
-- computed like recompute_predicate_objects.sql.
WITH pairs AS (
    SELECT DISTINCT subject_id, predicate_id FROM unnest($1::text[], $2::text[]) AS p(subject_id, predicate_id)
), computed AS (
    SELECT p.subject_id, p.predicate_id, s.triple_count, s.total_position_count, s.total_market_cap
    FROM pairs p
    CROSS JOIN LATERAL (
        SELECT count(t.term_id) AS triple_count,
               coalesce(sum(tt.total_position_count), 0) AS total_position_count,
               coalesce(sum(tt.total_market_cap), 0) AS total_market_cap
        FROM triple t
        LEFT JOIN triple_term tt ON tt.term_id = t.term_id
        WHERE t.subject_id = p.subject_id AND t.predicate_id = p.predicate_id
    ) s
), updated AS (
    UPDATE subject_predicate sp
    SET triple_count = c.triple_count, total_position_count = c.total_position_count,
        total_market_cap = c.total_market_cap
    FROM computed c
    WHERE sp.subject_id = c.subject_id AND sp.predicate_id = c.predicate_id
      AND c.triple_count > 0
      AND (sp.triple_count, sp.total_position_count, sp.total_market_cap)
          IS DISTINCT FROM (c.triple_count, c.total_position_count, c.total_market_cap)
)
DELETE FROM subject_predicate sp
USING computed c
WHERE sp.subject_id = c.subject_id AND sp.predicate_id = c.predicate_id AND c.triple_count = 0
