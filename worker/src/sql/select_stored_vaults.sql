-- Which of the given vaults (term, curve) are stored already, as the 1-based
-- ordinals of their keys: a fold upserts those (upsert_vaults.sql) and COPYs
-- the new ones (copy_vaults.sql; ADR 0022). The fold holds their partition
-- (ADR 0015). One index lookup per key (LATERAL, OFFSET 0: ADR 0008).
SELECT k.ordinal
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(term_id, curve_id, ordinal)
CROSS JOIN LATERAL (
    SELECT 1 FROM vault v WHERE v.term_id = k.term_id AND v.curve_id = k.curve_id OFFSET 0
) found
