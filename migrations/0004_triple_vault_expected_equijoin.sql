-- triple_vault_expected joined vaults with `term_id IN (triple, counter)`,
-- which PostgreSQL can only run as a nested loop over every (triple, vault)
-- pair: `verify` took ~10 s per analytics table on 200,000 events. The same
-- definition as two equi-joins (hash joins) gives identical rows.
CREATE OR REPLACE VIEW triple_vault_expected AS
WITH sides AS (
    SELECT t.term_id, t.counter_term_id, v.curve_id, v.total_shares, v.total_assets, v.position_count, v.market_cap
    FROM triple_expected t JOIN vault_expected v ON v.term_id = t.term_id
    UNION ALL
    SELECT t.term_id, t.counter_term_id, v.curve_id, v.total_shares, v.total_assets, v.position_count, v.market_cap
    FROM triple_expected t JOIN vault_expected v ON v.term_id = t.counter_term_id
    -- A triple whose counter term is itself would otherwise count its vault twice.
    WHERE t.counter_term_id <> t.term_id
)
SELECT term_id, counter_term_id, curve_id,
       sum(total_shares)   AS total_shares,
       sum(total_assets)   AS total_assets,
       sum(position_count)::bigint AS position_count,
       sum(market_cap)     AS market_cap
FROM sides
GROUP BY term_id, counter_term_id, curve_id;
