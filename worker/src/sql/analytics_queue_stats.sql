-- Depth, parked count and age of the oldest pending term (metrics, /health).
SELECT count(*) FILTER (WHERE parked_at IS NULL) AS depth,
       count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
       coalesce(extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE parked_at IS NULL)), 0)::float8 AS oldest_seconds
FROM analytics_queue
