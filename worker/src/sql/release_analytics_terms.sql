-- Ends the lease of claimed terms that are still queued (changed while being
-- processed, or failed), so they are claimable again without waiting for it.
-- Only rows that still carry this claim's token: a lease another worker took
-- over is not ours to end. A changed term starts a new coalescing window; a
-- failed one keeps the retry time fail_analytics_terms.sql gave it.
UPDATE analytics_queue q
SET claimed_until = NULL,
    claim_token = NULL,
    next_attempt_at = greatest(q.next_attempt_at, now())
FROM unnest($1::text[], $2::int8[]) AS c(term_id, token)
WHERE q.term_id = c.term_id AND q.claim_token = c.token
