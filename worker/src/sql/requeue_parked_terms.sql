-- Gives parked terms (all, or the listed ones) a fresh set of attempts.
UPDATE analytics_queue
SET parked_at = NULL, attempts = 0, next_attempt_at = now(), last_error = NULL, claimed_until = NULL
WHERE parked_at IS NOT NULL AND ($1::text[] IS NULL OR term_id = ANY($1::text[]))
