-- The newest delta id: a drain folds deltas up to it only, and commands that
-- fold first fold until none up to it is left (ADR 0019).
SELECT max(id) FROM fold_delta
