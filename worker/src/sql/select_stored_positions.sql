-- Which of the given positions (account, term, curve) are stored already, as
-- the 1-based ordinals of their keys. A fold upserts those
-- (upsert_positions.sql) and COPYs the new ones (copy_positions.sql), which
-- costs a fraction of an upsert's insert (ADR 0022). The fold holds the
-- partition of these terms (ADR 0015), so no other transaction adds or
-- removes one of these rows before it commits.
--
-- One index lookup per key (LATERAL, OFFSET 0: ADR 0008).
SELECT k.ordinal
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(account_id, term_id, curve_id, ordinal)
CROSS JOIN LATERAL (
    SELECT 1 FROM position p
    WHERE p.account_id = k.account_id AND p.term_id = k.term_id AND p.curve_id = k.curve_id
    OFFSET 0
) found
