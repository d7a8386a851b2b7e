-- One row per reorg (network, fork block, depth); each stream's first copy
-- adds the events it removed. Returns how many streams have passed it.
INSERT INTO chain_reorg AS r (network, fork_block, depth, events_removed, streams_passed)
VALUES ($1, $2, $3, $4, 1)
ON CONFLICT (network, fork_block, depth) DO UPDATE
SET events_removed = r.events_removed + excluded.events_removed,
    streams_passed = r.streams_passed + 1,
    last_applied_at = now()
RETURNING streams_passed
