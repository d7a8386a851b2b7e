-- Milliseconds until the next queued term becomes due for a claim
-- (claim_analytics_terms.sql: $1 = ANALYTICS_COALESCE_MS), 0 or less when one
-- is due now, NULL when none is queued. An analytics loop that found nothing to
-- claim sleeps until then (at most its poll interval), so that a queued term
-- waits the coalescing window and not a poll interval more. Terms under a
-- live claim become due again only if the claim lapses, which the poll
-- interval covers. Reads the queue's ready index (next_attempt_at order).
SELECT ceil(extract(epoch FROM min(next_attempt_at) + $1 * interval '1 millisecond' - now()) * 1000)::int8
FROM analytics_queue
WHERE parked_at IS NULL AND claimed_until IS NULL
