-- Marks claimed terms done, in the transaction that did their work: deletes
-- each row whose version is still the claimed one, locking rows in term order.
-- A row whose version moved (a change arrived meanwhile) stays for another
-- round; release_analytics_terms.sql makes it claimable at once.
DELETE FROM analytics_queue q
USING (
    SELECT c.term_id, c.version
    FROM unnest($1::text[], $2::int8[]) AS c(term_id, version)
    JOIN analytics_queue a ON a.term_id = c.term_id
    ORDER BY c.term_id
    FOR UPDATE OF a
) done
WHERE q.term_id = done.term_id AND q.version = done.version
