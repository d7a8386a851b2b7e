-- subject_predicate for the given pairs (locked by lock_subject_predicates.sql).
WITH pairs AS (
    SELECT DISTINCT subject_id, predicate_id FROM unnest($1::text[], $2::text[]) AS p(subject_id, predicate_id)
), computed AS (
    SELECT p.subject_id, p.predicate_id, count(t.term_id) AS triple_count,
           coalesce(sum(tt.total_position_count), 0) AS total_position_count,
           coalesce(sum(tt.total_market_cap), 0) AS total_market_cap
    FROM pairs p
    JOIN triple t ON t.subject_id = p.subject_id AND t.predicate_id = p.predicate_id
    LEFT JOIN triple_term tt ON tt.term_id = t.term_id
    GROUP BY p.subject_id, p.predicate_id
), updated AS (
    UPDATE subject_predicate sp
    SET triple_count = c.triple_count, total_position_count = c.total_position_count,
        total_market_cap = c.total_market_cap
    FROM computed c
    WHERE sp.subject_id = c.subject_id AND sp.predicate_id = c.predicate_id
      -- Unchanged rows are not rewritten (no dead rows for nothing).
      AND (sp.triple_count, sp.total_position_count, sp.total_market_cap)
          IS DISTINCT FROM (c.triple_count, c.total_position_count, c.total_market_cap)
)
DELETE FROM subject_predicate sp
USING pairs p
WHERE sp.subject_id = p.subject_id AND sp.predicate_id = p.predicate_id
  AND NOT EXISTS (SELECT 1 FROM computed c WHERE c.subject_id = p.subject_id AND c.predicate_id = p.predicate_id)
