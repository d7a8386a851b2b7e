-- vault.position_count = positions of the vault with shares > 0. Runs as its
-- own statement after the vault rows are locked, so its snapshot includes every
-- committed change to those vaults' positions (SPEC §4, stale-count trap).
UPDATE vault v
SET position_count = c.position_count
FROM (
    SELECT k.term_id, k.curve_id,
           (SELECT count(*) FROM position p
            WHERE p.term_id = k.term_id AND p.curve_id = k.curve_id AND p.shares > 0) AS position_count
    FROM unnest($1::text[], $2::text[]) AS k(term_id, curve_id)
) c
WHERE v.term_id = c.term_id AND v.curve_id = c.curve_id
  AND v.position_count IS DISTINCT FROM c.position_count
