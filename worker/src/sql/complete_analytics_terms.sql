-- Marks claimed terms done, in the transaction that did their work: deletes
-- each row that still carries this claim's token and whose version is still
-- the claimed one, locking rows in term order. A row whose version moved (a
-- change arrived meanwhile) stays for another round;
-- release_analytics_terms.sql makes it claimable at once. A row with another
-- token (the lease expired and another worker claimed the term, or the row
-- was completed and queued anew) is not this worker's to delete.
DELETE FROM analytics_queue q
USING (
    SELECT c.term_id, c.version, c.token
    FROM unnest($1::text[], $2::int8[], $3::int8[]) AS c(term_id, version, token)
    JOIN analytics_queue a ON a.term_id = c.term_id
    ORDER BY c.term_id
    FOR UPDATE OF a
) done
WHERE q.term_id = done.term_id AND q.version = done.version AND q.claim_token = done.token
