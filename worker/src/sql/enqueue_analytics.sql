-- Transactional outbox: one pending row per term. A term already pending is
-- left alone (deduplication); a parked term gets a fresh set of attempts
-- because new data may cure it. A row being processed is locked by its
-- analytics transaction, which deletes it: this insert waits and then creates a
-- new row, so a change committed during processing is processed again.
INSERT INTO analytics_queue AS q (term_id, trace_context)
SELECT k.term_id, $2::text
FROM unnest($1::text[]) AS k(term_id)
ORDER BY k.term_id
ON CONFLICT (term_id) DO UPDATE
SET parked_at = NULL, attempts = 0, next_attempt_at = now(), last_error = NULL,
    trace_context = EXCLUDED.trace_context
WHERE q.parked_at IS NOT NULL
