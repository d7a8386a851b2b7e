-- term.total_assets / total_market_cap = sums over the term's vaults. Runs
-- after upsert_terms.sql has locked the term rows.
UPDATE term t
SET total_assets = s.total_assets, total_market_cap = s.total_market_cap
FROM (
    SELECT v.term_id, sum(v.total_assets) AS total_assets, sum(v.market_cap) AS total_market_cap
    FROM vault v
    WHERE v.term_id = ANY($1::text[])
    GROUP BY v.term_id
) s
WHERE t.id = s.term_id
  AND (t.total_assets, t.total_market_cap) IS DISTINCT FROM (s.total_assets, s.total_market_cap)
