-- The claim (claim_analytics_terms.sql) takes due terms ORDER BY
-- next_attempt_at, term_id LIMIT n. With the index on next_attempt_at alone,
-- PostgreSQL read and sorted every due row to find the first n: with 30,000
-- terms queued at once a claim cost 29 ms, and a drain was quadratic in the
-- queue length. With term_id in the index the claim walks it in claim order
-- and stops after n rows.
DROP INDEX analytics_queue_ready_idx;
CREATE INDEX analytics_queue_ready_idx ON analytics_queue (next_attempt_at, term_id) WHERE parked_at IS NULL;
