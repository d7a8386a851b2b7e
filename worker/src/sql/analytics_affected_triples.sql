-- Triples whose analytics depend on the claimed terms: the term is the triple
-- or its counter term. Rows already in triple_term are included so that a
-- triple that no longer exists (rollback) has its analytics removed. Returns
-- each triple with the pairs it has now and the pairs it was counted under.
WITH claimed AS (SELECT unnest($1::text[]) AS term_id),
affected AS (
    SELECT t.term_id FROM triple t JOIN claimed c ON c.term_id = t.term_id
    UNION SELECT t.term_id FROM triple t JOIN claimed c ON c.term_id = t.counter_term_id
    UNION SELECT tt.term_id FROM triple_term tt JOIN claimed c ON c.term_id = tt.term_id
    UNION SELECT tt.term_id FROM triple_term tt JOIN claimed c ON c.term_id = tt.counter_term_id
)
SELECT a.term_id,
       t.subject_id, t.predicate_id, t.object_id,
       tt.subject_id AS old_subject_id, tt.predicate_id AS old_predicate_id, tt.object_id AS old_object_id
FROM affected a
LEFT JOIN triple t ON t.term_id = a.term_id
LEFT JOIN triple_term tt ON tt.term_id = a.term_id
