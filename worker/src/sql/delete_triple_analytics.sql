-- Removes the triple_vault and triple_term rows of the given triples before
-- they are recomputed (a separate statement: a DELETE and an INSERT of the same
-- keys cannot share one statement).
WITH targets AS (SELECT unnest($1::text[]) AS term_id),
vaults AS (
    DELETE FROM triple_vault tv USING targets x WHERE tv.term_id = x.term_id
)
DELETE FROM triple_term tt USING targets x WHERE tt.term_id = x.term_id
