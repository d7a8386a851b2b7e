-- /health: reorgs applied so far and the latest one.
SELECT (SELECT count(*) FROM chain_reorg), network, fork_block, depth,
       extract(epoch FROM last_applied_at)::float8, events_removed, streams_passed
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT * FROM chain_reorg ORDER BY last_applied_at DESC, fork_block DESC LIMIT 1
) AS latest ON true
