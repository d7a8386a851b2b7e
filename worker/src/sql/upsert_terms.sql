-- Level 2 `term`: one row per atom, triple, counter triple and vault term.
-- A stronger type claim (Atom > Triple > CounterTriple > Unknown) replaces a
-- weaker one, so the type does not depend on arrival order. An `Unknown`
-- claim (a vault term no creation event of the batch names) never replaces
-- anything: it creates a missing row and leaves an existing one alone,
-- unlocked (an ON CONFLICT DO UPDATE whose WHERE is false would still lock
-- and WAL-log it; the fold's partition claim already makes it the only
-- writer, ADR 0015 and 0021). Other claims lock their rows in id order.
WITH claims AS (
    SELECT DISTINCT ON (c.id) c.id, c.type, c.atom_id, c.triple_id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS c(id, type, atom_id, triple_id)
    ORDER BY c.id, term_type_rank(c.type) DESC, c.triple_id
), unknown AS (
    INSERT INTO term (id, type, atom_id, triple_id)
    SELECT id, type, atom_id, triple_id FROM claims WHERE type = 'Unknown'
    ORDER BY id
    ON CONFLICT (id) DO NOTHING
)
INSERT INTO term AS t (id, type, atom_id, triple_id)
SELECT id, type, atom_id, triple_id FROM claims WHERE type <> 'Unknown'
ORDER BY id
ON CONFLICT (id) DO UPDATE
SET type = EXCLUDED.type, atom_id = EXCLUDED.atom_id, triple_id = EXCLUDED.triple_id
WHERE term_type_rank(EXCLUDED.type) > term_type_rank(t.type)
   OR (term_type_rank(EXCLUDED.type) = term_type_rank(t.type) AND EXCLUDED.triple_id < t.triple_id)
