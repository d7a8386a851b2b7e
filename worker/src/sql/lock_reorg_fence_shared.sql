-- Batches take this before they read the fences (ADR 0018): a reorg's
-- EXCLUSIVE lock then waits for every batch in flight, and batches that start
-- meanwhile wait for it and read the fence it records.
LOCK TABLE reorg_fence IN ROW SHARE MODE
