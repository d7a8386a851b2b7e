-- Ends the lease of claimed terms that are still queued (changed while being
-- processed, or failed), so they are claimable again without waiting for it.
UPDATE analytics_queue
SET claimed_until = NULL
WHERE term_id = ANY($1::text[]) AND claimed_until IS NOT NULL
