-- Transactional outbox: one pending row per term. A pending, unclaimed term
-- is left alone (deduplication). A term an analytics worker has claimed gets
-- its version bumped, so that worker's completion keeps the row and the term
-- is processed again with this change. A parked term gets a fresh set of
-- attempts because new data may cure it. Rows are locked in term order.
--
-- Only triples are queued: atom vaults feed no analytics table (SPEC §3), and
-- a counter triple's change queues its triple (`term.triple_id`), the unit
-- every analytics row is computed for, so a triple and its counter triple
-- changed in one coalescing window share one queue row and one recomputation.
-- A term still Unknown here needs no entry: its TripleCreated queues the
-- triple when it arrives, and that recomputation reads both vaults.
-- upsert_terms.sql ran first in this transaction and waited for any
-- concurrent claim on these rows, so the types read here are current.
INSERT INTO analytics_queue AS q (term_id, trace_context)
SELECT DISTINCT CASE WHEN t.type = 'CounterTriple' THEN coalesce(t.triple_id, k.term_id) ELSE k.term_id END, $2::text
FROM unnest($1::text[]) AS k(term_id)
-- A per-key index lookup (OFFSET 0 keeps it one; ADR 0008).
CROSS JOIN LATERAL (SELECT type, triple_id FROM term WHERE id = k.term_id OFFSET 0) t
WHERE t.type IN ('Triple', 'CounterTriple')
ORDER BY 1
ON CONFLICT (term_id) DO UPDATE
SET version = q.version + 1,
    parked_at = NULL,
    attempts = CASE WHEN q.parked_at IS NOT NULL THEN 0 ELSE q.attempts END,
    next_attempt_at = CASE WHEN q.parked_at IS NOT NULL THEN now() ELSE q.next_attempt_at END,
    trace_context = EXCLUDED.trace_context
WHERE q.parked_at IS NOT NULL OR q.claimed_until IS NOT NULL
