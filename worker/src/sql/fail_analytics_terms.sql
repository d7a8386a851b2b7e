-- Records a failed attempt per term: retry after the given delay, or park the
-- term with its error once it has used its attempts; ends the lease.
UPDATE analytics_queue q
SET attempts = q.attempts + 1,
    last_error = f.error,
    next_attempt_at = now() + f.delay_ms * interval '1 millisecond',
    parked_at = CASE WHEN q.attempts + 1 >= $4 THEN now() END,
    claimed_until = NULL
FROM unnest($1::text[], $2::text[], $3::int8[]) AS f(term_id, error, delay_ms)
WHERE q.term_id = f.term_id
RETURNING q.term_id, q.parked_at IS NOT NULL AS parked
