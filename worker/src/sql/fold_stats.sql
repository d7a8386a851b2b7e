-- Unfolded deltas this binary can fold and the age of the oldest, in seconds
-- (0 when none); deltas of a newer format ($1 is this binary's), left for a
-- newer binary; parked deltas.
SELECT count(*) FILTER (WHERE format <= $1)::int8,
       coalesce(extract(epoch FROM clock_timestamp() - min(created_at) FILTER (WHERE format <= $1)), 0)::float8,
       count(*) FILTER (WHERE format > $1)::int8,
       (SELECT count(*) FROM fold_delta_parked)::int8
FROM fold_delta
