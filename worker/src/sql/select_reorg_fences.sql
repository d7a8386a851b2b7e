-- Fences of the batch's streams ($1) that can hold back entries from
-- millisecond $2 on: a fence discards only earlier entries of its stream.
SELECT stream, network, fork_block, entry_ms::text, entry_seq::text
FROM reorg_fence
WHERE stream = ANY($1) AND entry_ms >= $2::numeric
