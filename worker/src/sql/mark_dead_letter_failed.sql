-- A replay that failed again: the letter stays pending with the new reason;
-- the reason it was written with is kept in first_reason.
UPDATE dead_letters
SET first_reason = coalesce(first_reason, reason), reason = $2,
    replay_attempts = replay_attempts + 1, last_replay_at = now(), replay_note = $3
WHERE id = $1 AND replayed_at IS NULL
