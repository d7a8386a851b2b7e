-- Same as lock_predicate_objects.sql for subject_predicate (always locked after it).
INSERT INTO subject_predicate AS sp (subject_id, predicate_id, triple_count, total_position_count, total_market_cap)
SELECT DISTINCT p.subject_id, p.predicate_id, 0, 0, 0
FROM unnest($1::text[], $2::text[]) AS p(subject_id, predicate_id)
ORDER BY p.subject_id, p.predicate_id
ON CONFLICT (subject_id, predicate_id) DO UPDATE SET triple_count = sp.triple_count
WHERE false
