-- term.total_assets / total_market_cap = sums over the term's vaults. Runs
-- after upsert_terms.sql has locked the term rows. The sums are per-term index
-- lookups; the term rows are found by `id = ANY`, an index scan (ADR 0008).
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
