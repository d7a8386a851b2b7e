-- compatible-with-binaries-from: 10
-- Issue 21 (ADR 0018): chain reorganisations announced by rindexer's own
-- `__rindexer_reorg` notices. A copy of a notice in a stream is the fence of
-- that stream: the network's events of the stream's earlier entries at or
-- above the fork block are the dropped branch. Each stream's first copy of a
-- reorg is recorded here, in the transaction that removes those events, so a
-- redelivered dropped-branch entry is discarded by every worker afterwards.

-- A stream entry id `<ms>-<seq>` as a comparable pair (NULL when it is not one).
CREATE FUNCTION stream_entry_position(entry_id TEXT) RETURNS NUMERIC[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN entry_id ~ '^[0-9]{1,20}-[0-9]{1,20}$'
        THEN ARRAY[split_part(entry_id, '-', 1)::NUMERIC, split_part(entry_id, '-', 2)::NUMERIC]
    END
$$;

-- One row per reorg (network, fork block, depth): what every copy of its
-- notice removed, in all streams together.
CREATE TABLE chain_reorg (
    network         TEXT        NOT NULL,
    fork_block      BIGINT      NOT NULL,
    depth           BIGINT      NOT NULL,
    first_applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    events_removed  BIGINT      NOT NULL DEFAULT 0,
    streams_passed  INTEGER     NOT NULL DEFAULT 0,
    PRIMARY KEY (network, fork_block, depth)
);

-- The fence of one stream for one reorg: the position of the stream's first
-- copy of the notice.
CREATE TABLE reorg_fence (
    stream          TEXT        NOT NULL,
    network         TEXT        NOT NULL,
    fork_block      BIGINT      NOT NULL,
    depth           BIGINT      NOT NULL,
    entry_id        TEXT        NOT NULL,
    entry_ms        NUMERIC     NOT NULL,
    entry_seq       NUMERIC     NOT NULL,
    events_removed  BIGINT      NOT NULL,
    -- Time the removal and recomputation took, lock waits included.
    apply_ms        BIGINT      NOT NULL,
    applied_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, network, fork_block, depth),
    FOREIGN KEY (network, fork_block, depth) REFERENCES chain_reorg
);
CREATE INDEX reorg_fence_position_idx ON reorg_fence (stream, entry_ms);
