-- The entry that fenced this stream for this reorg, if one did: a later copy
-- of the same notice changes nothing (ADR 0018).
SELECT entry_id FROM reorg_fence
WHERE stream = $1 AND network = $2 AND fork_block = $3 AND depth = $4
