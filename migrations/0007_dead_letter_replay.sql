-- compatible-with-binaries-from: 6
-- Dead-letter replay (`postgres-writer dead-letters replay`): a letter is sent
-- back through decode and the write path once its cause is fixed, and kept for
-- audit. Only nullable or defaulted columns are added, so binaries of schema 6
-- keep inserting dead letters unchanged.
ALTER TABLE dead_letters
    -- The envelope of an array item's letter (raw_payload holds the item
    -- only): needed to decode the item again exactly as the first time.
    ADD COLUMN envelope_network     TEXT,
    ADD COLUMN event_signature_hash TEXT,
    -- Replays that failed again; `reason` then holds the newest failure and
    -- first_reason the reason the letter was written with.
    ADD COLUMN replay_attempts      INTEGER     NOT NULL DEFAULT 0,
    ADD COLUMN last_replay_at       TIMESTAMPTZ,
    ADD COLUMN first_reason         TEXT,
    -- Set, in the same transaction as the replayed write, once a replay
    -- succeeded: such a letter is never selected again.
    ADD COLUMN replayed_at          TIMESTAMPTZ,
    -- What the replay did (events stored, already present, items dead-lettered).
    ADD COLUMN replay_result        TEXT,
    -- Why the operator replayed it (`--note`).
    ADD COLUMN replay_note          TEXT;

-- `dead-letters list` and `replay` look at the letters not yet replayed.
CREATE INDEX dead_letters_pending_idx ON dead_letters (id) WHERE replayed_at IS NULL;
