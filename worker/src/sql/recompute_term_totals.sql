-- term.total_assets / total_market_cap = sums over the term's vaults. Runs
-- after upsert_terms.sql has locked the term rows. The sums are per-term index
-- lookups (ADR 0008); `id = ANY` restricts the term rows read to these ids
-- (an index scan on large tables; below ~10^5 terms the planner may prefer a
-- sequential scan with a hashed ANY).
UPDATE term t
SET total_assets = s.total_assets, total_market_cap = s.total_market_cap
FROM (
    SELECT k.id, sums.total_assets, sums.total_market_cap
    FROM unnest($1::text[]) AS k(id)
    CROSS JOIN LATERAL (
        SELECT sum(v.total_assets) AS total_assets, sum(v.market_cap) AS total_market_cap
        FROM vault v
        WHERE v.term_id = k.id
    ) sums
    -- A term without vaults keeps its totals (sum over no rows is NULL).
    WHERE sums.total_assets IS NOT NULL
) s
WHERE t.id = ANY($1::text[]) AND t.id = s.id
  AND (t.total_assets, t.total_market_cap) IS DISTINCT FROM (s.total_assets, s.total_market_cap)
