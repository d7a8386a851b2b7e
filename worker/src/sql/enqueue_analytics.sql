-- Transactional outbox: one pending row per term. A pending, unclaimed term
-- is left alone (deduplication). A term an analytics worker has claimed gets
-- its version bumped, so that worker's completion keeps the row and the term
-- is processed again with this change. A parked term gets a fresh set of
-- attempts because new data may cure it. Rows are locked in term order.
INSERT INTO analytics_queue AS q (term_id, trace_context)
SELECT k.term_id, $2::text
FROM unnest($1::text[]) AS k(term_id)
ORDER BY k.term_id
ON CONFLICT (term_id) DO UPDATE
SET version = q.version + 1,
    parked_at = NULL,
    attempts = CASE WHEN q.parked_at IS NOT NULL THEN 0 ELSE q.attempts END,
    next_attempt_at = CASE WHEN q.parked_at IS NOT NULL THEN now() ELSE q.next_attempt_at END,
    trace_context = EXCLUDED.trace_context
WHERE q.parked_at IS NOT NULL OR q.claimed_until IS NOT NULL
