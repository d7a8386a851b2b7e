-- A successful replay, in the same transaction as the replayed write: a crash
-- leaves the letter either applied and marked, or neither.
UPDATE dead_letters
SET replayed_at = now(), last_replay_at = now(), replay_attempts = replay_attempts + 1,
    replay_result = $2, replay_note = $3
WHERE id = $1 AND replayed_at IS NULL
