-- Levels 1-3 of the read model (SPEC section 3) and the analytics queue.
-- Every "newest wins" column keeps the (block_number, log_index,
-- transaction_hash) of the event it came from so that upserts are order
-- independent. "Newest" is the greatest (block_number, log_index); the
-- transaction hash only breaks ties between conflicting deliveries.

CREATE TABLE atom (
    term_id          TEXT        PRIMARY KEY,
    creator_id       TEXT        NOT NULL,
    wallet_id        TEXT        NOT NULL,
    data             TEXT,
    raw_data         BYTEA,
    block_number     BIGINT      NOT NULL,
    log_index        BIGINT      NOT NULL,
    transaction_hash TEXT        NOT NULL,
    created_at       TIMESTAMPTZ
);

CREATE TABLE triple (
    term_id          TEXT        PRIMARY KEY,
    subject_id       TEXT        NOT NULL,
    predicate_id     TEXT        NOT NULL,
    object_id        TEXT        NOT NULL,
    creator_id       TEXT        NOT NULL,
    counter_term_id  TEXT        NOT NULL,
    block_number     BIGINT      NOT NULL,
    log_index        BIGINT      NOT NULL,
    transaction_hash TEXT        NOT NULL,
    created_at       TIMESTAMPTZ
);
CREATE INDEX triple_counter_idx ON triple (counter_term_id);
CREATE INDEX triple_subject_predicate_idx ON triple (subject_id, predicate_id);
CREATE INDEX triple_predicate_object_idx ON triple (predicate_id, object_id);

CREATE TABLE position (
    account_id                             TEXT          NOT NULL,
    term_id                                TEXT          NOT NULL,
    curve_id                               TEXT          NOT NULL,
    shares                                 NUMERIC(78,0) NOT NULL,
    total_deposit_assets_after_total_fees  NUMERIC       NOT NULL DEFAULT 0,
    total_redeem_assets_for_receiver       NUMERIC       NOT NULL DEFAULT 0,
    -- Position in the chain of the event that set `shares`.
    block_number                           BIGINT        NOT NULL,
    log_index                              BIGINT        NOT NULL,
    transaction_hash                       TEXT          NOT NULL,
    PRIMARY KEY (account_id, term_id, curve_id)
);
CREATE INDEX position_vault_active_idx ON position (term_id, curve_id) WHERE shares > 0;

CREATE TABLE vault (
    term_id             TEXT          NOT NULL,
    curve_id            TEXT          NOT NULL,
    total_shares        NUMERIC(78,0) NOT NULL DEFAULT 0,
    total_assets        NUMERIC(78,0) NOT NULL DEFAULT 0,
    current_share_price NUMERIC(78,0) NOT NULL DEFAULT 0,
    vault_type          SMALLINT      NOT NULL DEFAULT 0,
    -- Solidity-style truncating division; unbounded NUMERIC so that no input can overflow it.
    market_cap          NUMERIC       GENERATED ALWAYS AS (div(total_shares * current_share_price, 1000000000000000000)) STORED,
    position_count      BIGINT        NOT NULL DEFAULT 0,
    -- Position in the chain of the SharePriceChanged the totals come from (NULL: none yet).
    price_block_number      BIGINT,
    price_log_index         BIGINT,
    price_transaction_hash  TEXT,
    PRIMARY KEY (term_id, curve_id)
);

CREATE TABLE term (
    id               TEXT    PRIMARY KEY,
    type             TEXT    NOT NULL CHECK (type IN ('Atom', 'Triple', 'CounterTriple', 'Unknown')),
    atom_id          TEXT,
    triple_id        TEXT,
    total_assets     NUMERIC NOT NULL DEFAULT 0,
    total_market_cap NUMERIC NOT NULL DEFAULT 0
);

-- Precedence of term types: a creation event always beats "Unknown", so the
-- result does not depend on which event arrived first.
CREATE FUNCTION term_type_rank(t TEXT) RETURNS INTEGER
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE t WHEN 'Atom' THEN 3 WHEN 'Triple' THEN 2 WHEN 'CounterTriple' THEN 1 ELSE 0 END $$;

-- Level 3: analytics (eventually consistent, maintained from analytics_queue).
CREATE TABLE triple_vault (
    term_id         TEXT    NOT NULL,
    counter_term_id TEXT    NOT NULL,
    curve_id        TEXT    NOT NULL,
    total_shares    NUMERIC NOT NULL,
    total_assets    NUMERIC NOT NULL,
    position_count  BIGINT  NOT NULL,
    market_cap      NUMERIC NOT NULL,
    PRIMARY KEY (term_id, counter_term_id, curve_id)
);

CREATE TABLE triple_term (
    term_id              TEXT    NOT NULL,
    counter_term_id      TEXT    NOT NULL,
    total_assets         NUMERIC NOT NULL,
    total_market_cap     NUMERIC NOT NULL,
    total_position_count BIGINT  NOT NULL,
    -- The pairs this triple is counted under in predicate_object and
    -- subject_predicate (lets the analytics find old pairs after a change).
    subject_id           TEXT    NOT NULL,
    predicate_id         TEXT    NOT NULL,
    object_id            TEXT    NOT NULL,
    PRIMARY KEY (term_id, counter_term_id)
);
CREATE INDEX triple_term_counter_idx ON triple_term (counter_term_id);

CREATE TABLE predicate_object (
    predicate_id         TEXT    NOT NULL,
    object_id            TEXT    NOT NULL,
    triple_count         BIGINT  NOT NULL,
    total_position_count BIGINT  NOT NULL,
    total_market_cap     NUMERIC NOT NULL,
    PRIMARY KEY (predicate_id, object_id)
);

CREATE TABLE subject_predicate (
    subject_id           TEXT    NOT NULL,
    predicate_id         TEXT    NOT NULL,
    triple_count         BIGINT  NOT NULL,
    total_position_count BIGINT  NOT NULL,
    total_market_cap     NUMERIC NOT NULL,
    PRIMARY KEY (subject_id, predicate_id)
);

-- Transactional outbox: filled in the same transaction as the change that
-- affects a term, one row per term while pending. Analytics workers claim rows
-- with FOR UPDATE SKIP LOCKED for a lease (claimed_until) in a short
-- transaction, and delete them in the transaction that does the work, unless
-- `version` moved meanwhile (a change committed during processing: the row
-- stays and is processed again). See ADR 0004.
CREATE TABLE analytics_queue (
    term_id         TEXT        PRIMARY KEY,
    -- Bumped by every change that arrives while the term is claimed.
    version         BIGINT      NOT NULL DEFAULT 0,
    -- Claimed by an analytics worker until then (NULL: not claimed).
    claimed_until   TIMESTAMPTZ,
    enqueued_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    -- Set when attempts reached the maximum; cleared by a new change or `requeue`.
    parked_at       TIMESTAMPTZ,
    -- W3C traceparent of the span that enqueued the term (links analytics work to it).
    trace_context   TEXT
);
CREATE INDEX analytics_queue_ready_idx ON analytics_queue (next_attempt_at) WHERE parked_at IS NULL;
