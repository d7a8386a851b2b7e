-- triple_vault for the given triples: per curve, sums over the triple's vault
-- and its counter vault (only curves where one of them exists). Rows are
-- updated in place and only when a value changed (HOT updates, no churn);
-- rows of the given triples that no longer have a definition are deleted.
WITH targets AS (SELECT unnest($1::text[]) AS term_id),
computed AS (
    SELECT t.term_id, t.counter_term_id, v.curve_id,
           sum(v.total_shares) AS total_shares, sum(v.total_assets) AS total_assets,
           sum(v.position_count) AS position_count, sum(v.market_cap) AS market_cap
    FROM targets x
    JOIN triple t ON t.term_id = x.term_id
    JOIN vault v ON v.term_id IN (t.term_id, t.counter_term_id)
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
WHERE tv.term_id = ANY($1::text[])
  -- NOT IN (key columns are NOT NULL): one hashed lookup per row.
  AND (tv.term_id, tv.counter_term_id, tv.curve_id) NOT IN (SELECT term_id, counter_term_id, curve_id FROM computed)
