-- Takes one letter for replay: the row lock makes concurrent replays of the
-- same letter wait, and the caller re-checks replayed_at under it.
SELECT replayed_at IS NOT NULL FROM dead_letters WHERE id = $1 FOR UPDATE
