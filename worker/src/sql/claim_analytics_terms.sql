-- Claims due terms for a lease of $2 milliseconds, in its own short
-- transaction: writers never wait for the analytics work itself. SKIP LOCKED:
-- concurrent analytics workers take disjoint terms; an expired lease (a
-- worker that died or is still busy) makes a term claimable again. Each claim
-- stamps the row with a fresh token: completion, release and failure act only
-- on rows that still carry it, so a worker whose lease was taken over owns
-- nothing any more. A term becomes due $3 milliseconds after it was queued
-- (or released), so the changes of that window are recomputed once
-- (ANALYTICS_COALESCE_MS).
UPDATE analytics_queue q
SET claimed_until = now() + $2 * interval '1 millisecond',
    claim_token = nextval('analytics_claim_token_seq')
FROM (
    SELECT term_id
    FROM analytics_queue
    WHERE parked_at IS NULL AND next_attempt_at <= now() - $3 * interval '1 millisecond'
      AND (claimed_until IS NULL OR claimed_until < now())
    ORDER BY next_attempt_at, term_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
) due
WHERE q.term_id = due.term_id
RETURNING q.term_id, q.version, q.attempts, q.trace_context, q.claim_token
