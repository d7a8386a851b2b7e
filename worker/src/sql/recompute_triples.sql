-- triple_vault and triple_term for the given triples, in one statement:
-- - triple_vault: per curve, sums over the triple's vault and its counter vault
--   (only curves where one of them exists);
-- - triple_term: sums of those triple_vault rows over curves (zeros for a
--   triple without vaults), plus the pairs the triple is counted under, so a
--   later change of them recomputes the old pairs too.
-- Rows are updated in place and only when a value changed (HOT updates, no
-- churn); rows of given triples that no longer have a definition (rollback) or
-- a curve that no longer has a vault are deleted. The two tables are written
-- by separate sub-statements of this one statement; no other transaction
-- touches these triples' rows meanwhile: the pair locks taken before this
-- statement (lock_predicate_objects.sql) serialise analytics per triple.
--
-- Every read is a per-key index lookup (LATERAL, OFFSET 0: ADR 0008).
WITH triples AS (
    SELECT t.term_id, t.counter_term_id, t.subject_id, t.predicate_id, t.object_id
    FROM unnest($1::text[]) AS x(term_id)
    CROSS JOIN LATERAL (
        SELECT term_id, counter_term_id, subject_id, predicate_id, object_id
        FROM triple WHERE term_id = x.term_id OFFSET 0
    ) t
), vaults AS (
    SELECT t.term_id, t.counter_term_id, v.curve_id,
           sum(v.total_shares) AS total_shares, sum(v.total_assets) AS total_assets,
           sum(v.position_count) AS position_count, sum(v.market_cap) AS market_cap
    FROM triples t
    CROSS JOIN LATERAL (
        SELECT curve_id, total_shares, total_assets, position_count, market_cap
        FROM vault WHERE term_id IN (t.term_id, t.counter_term_id) OFFSET 0
    ) v
    GROUP BY t.term_id, t.counter_term_id, v.curve_id
), terms AS (
    SELECT t.term_id, t.counter_term_id,
           coalesce(sum(v.total_assets), 0) AS total_assets, coalesce(sum(v.market_cap), 0) AS total_market_cap,
           coalesce(sum(v.position_count), 0) AS total_position_count,
           t.subject_id, t.predicate_id, t.object_id
    FROM triples t
    LEFT JOIN vaults v ON v.term_id = t.term_id
    GROUP BY t.term_id, t.counter_term_id, t.subject_id, t.predicate_id, t.object_id
), written_vaults AS (
    INSERT INTO triple_vault AS tv (term_id, counter_term_id, curve_id, total_shares, total_assets, position_count, market_cap)
    SELECT term_id, counter_term_id, curve_id, total_shares, total_assets, position_count, market_cap
    FROM vaults
    ORDER BY term_id, counter_term_id, curve_id
    ON CONFLICT (term_id, counter_term_id, curve_id) DO UPDATE
    SET total_shares = EXCLUDED.total_shares, total_assets = EXCLUDED.total_assets,
        position_count = EXCLUDED.position_count, market_cap = EXCLUDED.market_cap
    WHERE (tv.total_shares, tv.total_assets, tv.position_count, tv.market_cap)
          IS DISTINCT FROM (EXCLUDED.total_shares, EXCLUDED.total_assets, EXCLUDED.position_count, EXCLUDED.market_cap)
), deleted_vaults AS (
    DELETE FROM triple_vault tv
    USING (
        SELECT s.ctid
        FROM unnest($1::text[]) AS x(term_id)
        CROSS JOIN LATERAL (
            SELECT ctid, term_id, counter_term_id, curve_id FROM triple_vault WHERE term_id = x.term_id OFFSET 0
        ) s
        -- NOT IN (key columns are NOT NULL): one hashed lookup per row.
        WHERE (s.term_id, s.counter_term_id, s.curve_id) NOT IN (SELECT term_id, counter_term_id, curve_id FROM vaults)
    ) gone
    WHERE tv.ctid = gone.ctid
), written_terms AS (
    INSERT INTO triple_term AS tt (term_id, counter_term_id, total_assets, total_market_cap, total_position_count,
                                   subject_id, predicate_id, object_id)
    SELECT term_id, counter_term_id, total_assets, total_market_cap, total_position_count,
           subject_id, predicate_id, object_id
    FROM terms
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
    WHERE (s.term_id, s.counter_term_id) NOT IN (SELECT term_id, counter_term_id FROM terms)
) gone
WHERE tt.ctid = gone.ctid
