-- triple_term for the given triples (old rows deleted by
-- delete_triple_analytics.sql, triple_vault just recomputed): sums of
-- triple_vault over curves, zeros for a triple without vaults. Also records
-- the pairs the triple is counted under, so that a later change of them
-- recomputes the old pairs too.
WITH targets AS (SELECT unnest($1::text[]) AS term_id)
INSERT INTO triple_term (term_id, counter_term_id, total_assets, total_market_cap, total_position_count,
                         subject_id, predicate_id, object_id)
SELECT t.term_id, t.counter_term_id,
       coalesce(sum(tv.total_assets), 0), coalesce(sum(tv.market_cap), 0), coalesce(sum(tv.position_count), 0),
       t.subject_id, t.predicate_id, t.object_id
FROM targets x
JOIN triple t ON t.term_id = x.term_id
LEFT JOIN triple_vault tv ON tv.term_id = t.term_id AND tv.counter_term_id = t.counter_term_id
GROUP BY t.term_id, t.counter_term_id, t.subject_id, t.predicate_id, t.object_id
