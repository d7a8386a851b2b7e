-- Level 2 `term`: one row per atom, triple, counter triple and vault term.
-- A stronger type claim (Atom > Triple > CounterTriple > Unknown) replaces a
-- weaker one, so the type does not depend on arrival order. Every row of the
-- batch is locked (in id order) even when unchanged, which serialises the
-- totals recomputation that follows.
INSERT INTO term AS t (id, type, atom_id, triple_id)
SELECT DISTINCT ON (c.id) c.id, c.type, c.atom_id, c.triple_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS c(id, type, atom_id, triple_id)
ORDER BY c.id, term_type_rank(c.type) DESC, c.triple_id
ON CONFLICT (id) DO UPDATE
SET type = EXCLUDED.type, atom_id = EXCLUDED.atom_id, triple_id = EXCLUDED.triple_id
WHERE term_type_rank(EXCLUDED.type) > term_type_rank(t.type)
   OR (term_type_rank(EXCLUDED.type) = term_type_rank(t.type) AND EXCLUDED.triple_id < t.triple_id)
