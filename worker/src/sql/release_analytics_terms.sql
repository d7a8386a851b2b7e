-- Ends the lease of claimed terms that are still queued (changed while being
-- processed, or failed), so they are claimable again without waiting for it.
-- A changed term starts a new coalescing window; a failed one keeps the retry
-- time fail_analytics_terms.sql gave it.
UPDATE analytics_queue
SET claimed_until = NULL,
    next_attempt_at = greatest(next_attempt_at, now())
WHERE term_id = ANY($1::text[]) AND claimed_until IS NOT NULL
