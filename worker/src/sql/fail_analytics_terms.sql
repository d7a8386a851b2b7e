-- Records a failed attempt per term: retry after the given delay, or park the
-- term with its error once it has used its attempts; ends the lease. Only rows
-- that still carry this claim's token: a worker whose lease another worker
-- took over must not end that worker's lease nor count an attempt on it.
UPDATE analytics_queue q
SET attempts = q.attempts + 1,
    last_error = f.error,
    next_attempt_at = now() + f.delay_ms * interval '1 millisecond',
    parked_at = CASE WHEN q.attempts + 1 >= $4 THEN now() END,
    claimed_until = NULL,
    claim_token = NULL
FROM unnest($1::text[], $2::text[], $3::int8[], $5::int8[]) AS f(term_id, error, delay_ms, token)
WHERE q.term_id = f.term_id AND q.claim_token = f.token
RETURNING q.term_id, q.parked_at IS NOT NULL AS parked
