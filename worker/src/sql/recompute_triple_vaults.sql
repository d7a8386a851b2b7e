-- triple_vault for the given triples (their old rows were just deleted by
-- delete_triple_analytics.sql): per curve, sums over the triple's vault
-- and its counter vault (only curves where one of them exists).
WITH targets AS (SELECT unnest($1::text[]) AS term_id)
INSERT INTO triple_vault (term_id, counter_term_id, curve_id, total_shares, total_assets, position_count, market_cap)
SELECT t.term_id, t.counter_term_id, v.curve_id,
       sum(v.total_shares), sum(v.total_assets), sum(v.position_count), sum(v.market_cap)
FROM targets x
JOIN triple t ON t.term_id = x.term_id
JOIN vault v ON v.term_id IN (t.term_id, t.counter_term_id)
GROUP BY t.term_id, t.counter_term_id, v.curve_id
