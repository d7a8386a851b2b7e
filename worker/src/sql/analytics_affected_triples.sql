-- Triples whose analytics depend on the claimed terms: the term is the triple
-- or its counter term. Rows already in triple_term are included so that a
-- triple that no longer exists (rollback) has its analytics removed. Returns
-- each triple with the pairs it has now and the pairs it was counted under.
--
-- Every step is a per-key index lookup (LATERAL; OFFSET 0 keeps the planner
-- from turning a lookup into a hash join over the whole table), so the cost
-- follows the number of claimed terms, never the size of `triple` (ADR 0008).
WITH affected AS (
    SELECT DISTINCT a.term_id
    FROM unnest($1::text[]) AS c(term_id)
    CROSS JOIN LATERAL (
        SELECT t.term_id FROM triple t WHERE t.term_id = c.term_id OR t.counter_term_id = c.term_id
        UNION ALL
        SELECT tt.term_id FROM triple_term tt WHERE tt.term_id = c.term_id OR tt.counter_term_id = c.term_id
    ) a
)
SELECT a.term_id,
       t.subject_id, t.predicate_id, t.object_id,
       tt.subject_id AS old_subject_id, tt.predicate_id AS old_predicate_id, tt.object_id AS old_object_id
FROM affected a
LEFT JOIN LATERAL (
    SELECT subject_id, predicate_id, object_id FROM triple WHERE term_id = a.term_id OFFSET 0
) t ON true
LEFT JOIN LATERAL (
    SELECT subject_id, predicate_id, object_id FROM triple_term WHERE term_id = a.term_id OFFSET 0
) tt ON true
