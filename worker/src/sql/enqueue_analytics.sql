-- Transactional outbox, written by the fold that changes a triple's inputs
-- (ADR 0015): one pending row per triple. A pending, unclaimed row is left
-- alone (deduplication). A row an analytics worker has claimed gets its
-- version bumped, so that worker's completion keeps the row and the triple
-- is processed again with this change. A parked row gets a fresh set of
-- attempts because new data may cure it. Rows are locked in term order.
--
-- Only triples are queued: atom vaults feed no analytics table (contract
-- §3), and a counter triple's change queues its triple (term.triple_id),
-- the one recomputation both feed (ADR 0022). The changes of a triple and of
-- its counter triple then share one row, and two analytics workers never
-- take one triple under two terms and wait for each other's pair locks. Two
-- folds (the triple's partition and its counter's) may upsert one row; each
-- locks its rows in term order, after its own partitions' rows, so one
-- waits for the other's commit and never deadlocks.
--
-- A term still Unknown here needs no entry: its TripleCreated queues the
-- triple when it arrives, and that recomputation reads both vaults.
-- upsert_terms.sql ran first in this transaction, and the folder owns these
-- terms' partition, so the types read here are current.
INSERT INTO analytics_queue AS q (term_id, trace_context)
SELECT DISTINCT CASE t.type WHEN 'CounterTriple' THEN t.triple_id ELSE t.id END, $2::text
FROM (
    SELECT unnest($1::text[])
    -- Counter terms whose CounterTriple claim is folded now: queued only if a
    -- vault of theirs was folded earlier, while they were still Unknown (and
    -- so not queued then); the fold may apply that claim after their triple's
    -- analytics ran (ADR 0015).
    UNION
    SELECT c.id FROM unnest($3::text[]) AS c(id)
    WHERE EXISTS (SELECT 1 FROM vault v WHERE v.term_id = c.id)
) AS k(term_id)
JOIN term t ON t.id = k.term_id AND t.type IN ('Triple', 'CounterTriple') AND (t.type = 'Triple' OR t.triple_id IS NOT NULL)
ORDER BY 1
ON CONFLICT (term_id) DO UPDATE
SET version = q.version + 1,
    parked_at = NULL,
    attempts = CASE WHEN q.parked_at IS NOT NULL THEN 0 ELSE q.attempts END,
    next_attempt_at = CASE WHEN q.parked_at IS NOT NULL THEN now() ELSE q.next_attempt_at END,
    trace_context = EXCLUDED.trace_context
WHERE q.parked_at IS NOT NULL OR q.claimed_until IS NOT NULL
