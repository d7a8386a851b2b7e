-- Claims due terms for this analytics transaction. SKIP LOCKED: concurrent
-- analytics workers take disjoint terms and never wait for each other here.
SELECT term_id, attempts, trace_context
FROM analytics_queue
WHERE parked_at IS NULL AND next_attempt_at <= now()
ORDER BY next_attempt_at, term_id
LIMIT $1
FOR UPDATE SKIP LOCKED
