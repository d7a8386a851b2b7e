-- triple_term for the given triples (triple_vault just recomputed): sums of
-- triple_vault over curves, zeros for a triple without vaults. Also records
-- the pairs the triple is counted under, so that a later change of them
-- recomputes the old pairs too. Updated in place only when a value changed;
-- rows of given triples that no longer exist (rollback) are deleted.
WITH targets AS (SELECT unnest($1::text[]) AS term_id),
computed AS (
    SELECT t.term_id, t.counter_term_id,
           coalesce(sum(tv.total_assets), 0) AS total_assets, coalesce(sum(tv.market_cap), 0) AS total_market_cap,
           coalesce(sum(tv.position_count), 0) AS total_position_count,
           t.subject_id, t.predicate_id, t.object_id
    FROM targets x
    JOIN triple t ON t.term_id = x.term_id
    LEFT JOIN triple_vault tv ON tv.term_id = t.term_id AND tv.counter_term_id = t.counter_term_id
    GROUP BY t.term_id, t.counter_term_id, t.subject_id, t.predicate_id, t.object_id
), written AS (
    INSERT INTO triple_term AS tt (term_id, counter_term_id, total_assets, total_market_cap, total_position_count,
                                   subject_id, predicate_id, object_id)
    SELECT term_id, counter_term_id, total_assets, total_market_cap, total_position_count,
           subject_id, predicate_id, object_id
    FROM computed
    ORDER BY term_id, counter_term_id
    ON CONFLICT (term_id, counter_term_id) DO UPDATE
    SET total_assets = EXCLUDED.total_assets, total_market_cap = EXCLUDED.total_market_cap,
        total_position_count = EXCLUDED.total_position_count,
        subject_id = EXCLUDED.subject_id, predicate_id = EXCLUDED.predicate_id, object_id = EXCLUDED.object_id
    WHERE (tt.total_assets, tt.total_market_cap, tt.total_position_count, tt.subject_id, tt.predicate_id, tt.object_id)
          IS DISTINCT FROM (EXCLUDED.total_assets, EXCLUDED.total_market_cap, EXCLUDED.total_position_count,
                            EXCLUDED.subject_id, EXCLUDED.predicate_id, EXCLUDED.object_id)
)
DELETE FROM triple_term tt
WHERE tt.term_id = ANY($1::text[])
  -- NOT IN (key columns are NOT NULL): one hashed lookup per row.
  AND (tt.term_id, tt.counter_term_id) NOT IN (SELECT term_id, counter_term_id FROM computed)
