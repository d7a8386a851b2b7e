-- The fence of stream $1 for this reorg: its first copy's entry id $5 (ADR 0018).
INSERT INTO reorg_fence (stream, network, fork_block, depth, entry_id, entry_ms, entry_seq, events_removed, apply_ms)
SELECT $1, $2, $3, $4, $5, p[1], p[2], $6, $7
FROM stream_entry_position($5) AS p
WHERE p IS NOT NULL
