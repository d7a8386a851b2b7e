-- Unfolded deltas and the age of the oldest, in seconds (0 when none).
SELECT count(*)::int8,
       coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8
FROM fold_delta
