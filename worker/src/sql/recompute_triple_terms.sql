-- triple_term for the given triples (triple_vault just recomputed): sums of
-- triple_vault over curves, zeros for a triple without vaults. Also records
-- the pairs the triple is counted under, so that a later change of them
-- recomputes the old pairs too. Updated in place only when a value changed;
-- rows of given triples that no longer exist (rollback) are deleted.
-- Every read is a per-key index lookup (LATERAL, OFFSET 0: ADR 0008).
WITH computed AS (
    SELECT t.term_id, t.counter_term_id,
           sums.total_assets, sums.total_market_cap, sums.total_position_count,
           t.subject_id, t.predicate_id, t.object_id
    FROM unnest($1::text[]) AS x(term_id)
    CROSS JOIN LATERAL (
        SELECT term_id, counter_term_id, subject_id, predicate_id, object_id
        FROM triple WHERE term_id = x.term_id OFFSET 0
    ) t
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(tv.total_assets), 0) AS total_assets, coalesce(sum(tv.market_cap), 0) AS total_market_cap,
               coalesce(sum(tv.position_count), 0) AS total_position_count
        FROM triple_vault tv
        WHERE tv.term_id = t.term_id AND tv.counter_term_id = t.counter_term_id
    ) sums
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
USING (
    SELECT s.ctid
    FROM unnest($1::text[]) AS x(term_id)
    CROSS JOIN LATERAL (
        SELECT ctid, term_id, counter_term_id FROM triple_term WHERE term_id = x.term_id OFFSET 0
    ) s
    -- NOT IN (key columns are NOT NULL): one hashed lookup per row.
    WHERE (s.term_id, s.counter_term_id) NOT IN (SELECT term_id, counter_term_id FROM computed)
) gone
-- The pair locks taken before this statement keep other transactions off
-- these rows, so the row version found above is the one deleted.
WHERE tt.ctid = gone.ctid
