-- triple_vault for the given triples: per curve, sums over the triple's vault
-- and its counter vault (only curves where one of them exists). Rows are
-- updated in place and only when a value changed (HOT updates, no churn);
-- rows of the given triples that no longer have a definition are deleted.
-- Every read is a per-key index lookup (LATERAL, OFFSET 0: ADR 0008).
WITH computed AS (
    SELECT t.term_id, t.counter_term_id, v.curve_id,
           sum(v.total_shares) AS total_shares, sum(v.total_assets) AS total_assets,
           sum(v.position_count) AS position_count, sum(v.market_cap) AS market_cap
    FROM unnest($1::text[]) AS x(term_id)
    CROSS JOIN LATERAL (SELECT term_id, counter_term_id FROM triple WHERE term_id = x.term_id OFFSET 0) t
    CROSS JOIN LATERAL (
        SELECT curve_id, total_shares, total_assets, position_count, market_cap
        FROM vault WHERE term_id IN (t.term_id, t.counter_term_id) OFFSET 0
    ) v
    GROUP BY t.term_id, t.counter_term_id, v.curve_id
), written AS (
    INSERT INTO triple_vault AS tv (term_id, counter_term_id, curve_id, total_shares, total_assets, position_count, market_cap)
    SELECT term_id, counter_term_id, curve_id, total_shares, total_assets, position_count, market_cap
    FROM computed
    ORDER BY term_id, counter_term_id, curve_id
    ON CONFLICT (term_id, counter_term_id, curve_id) DO UPDATE
    SET total_shares = EXCLUDED.total_shares, total_assets = EXCLUDED.total_assets,
        position_count = EXCLUDED.position_count, market_cap = EXCLUDED.market_cap
    WHERE (tv.total_shares, tv.total_assets, tv.position_count, tv.market_cap)
          IS DISTINCT FROM (EXCLUDED.total_shares, EXCLUDED.total_assets, EXCLUDED.position_count, EXCLUDED.market_cap)
)
DELETE FROM triple_vault tv
USING (
    SELECT s.ctid
    FROM unnest($1::text[]) AS x(term_id)
    CROSS JOIN LATERAL (
        SELECT ctid, term_id, counter_term_id, curve_id FROM triple_vault WHERE term_id = x.term_id OFFSET 0
    ) s
    -- NOT IN (key columns are NOT NULL): one hashed lookup per row.
    WHERE (s.term_id, s.counter_term_id, s.curve_id) NOT IN (SELECT term_id, counter_term_id, curve_id FROM computed)
) gone
-- The pair locks taken before this statement keep other transactions off
-- these rows, so the row version found above is the one deleted.
WHERE tv.ctid = gone.ctid
