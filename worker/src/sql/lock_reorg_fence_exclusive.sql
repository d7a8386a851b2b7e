-- A reorg notice's transaction (ADR 0018): no batch reads or writes
-- events while the fence is recorded and the dropped branch removed.
LOCK TABLE reorg_fence IN EXCLUSIVE MODE
