-- Level 0: append-only event tables, one per event type with defined effects,
-- plus generic_events for every other event name. Primary key
-- (transaction_hash, log_index): a redelivered event is a no-op.
-- Every table carries where it came from (stream, entry_id, item_index) and the
-- chain position (network, block_number, log_index) that orders "newest".
-- Indexes are kept to the primary key and (network, block_number) for
-- rollbacks: every extra index costs on the hot insert path, and the derived
-- tables already answer the per-term and per-account questions.

CREATE TABLE atom_created_events (
    transaction_hash  TEXT        NOT NULL,
    log_index         BIGINT      NOT NULL,
    network           TEXT        NOT NULL,
    block_number      BIGINT      NOT NULL,
    block_hash        TEXT,
    block_timestamp   TIMESTAMPTZ,
    transaction_index BIGINT,
    contract_address  TEXT,
    stream            TEXT        NOT NULL,
    entry_id          TEXT        NOT NULL,
    item_index        INTEGER     NOT NULL,
    inserted_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    creator           TEXT        NOT NULL,
    term_id           TEXT        NOT NULL,
    atom_data         BYTEA       NOT NULL,
    -- atom_data as text when it is UTF-8 without NUL bytes, else NULL.
    atom_data_text    TEXT,
    atom_wallet       TEXT        NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX atom_created_events_block_idx ON atom_created_events (network, block_number);

CREATE TABLE triple_created_events (
    transaction_hash  TEXT        NOT NULL,
    log_index         BIGINT      NOT NULL,
    network           TEXT        NOT NULL,
    block_number      BIGINT      NOT NULL,
    block_hash        TEXT,
    block_timestamp   TIMESTAMPTZ,
    transaction_index BIGINT,
    contract_address  TEXT,
    stream            TEXT        NOT NULL,
    entry_id          TEXT        NOT NULL,
    item_index        INTEGER     NOT NULL,
    inserted_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    creator           TEXT        NOT NULL,
    term_id           TEXT        NOT NULL,
    subject_id        TEXT        NOT NULL,
    predicate_id      TEXT        NOT NULL,
    object_id         TEXT        NOT NULL,
    -- keccak256(keccak256("COUNTER_SALT") ++ term_id), computed at decode time.
    counter_term_id   TEXT        NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX triple_created_events_block_idx ON triple_created_events (network, block_number);

CREATE TABLE deposited_events (
    transaction_hash  TEXT          NOT NULL,
    log_index         BIGINT        NOT NULL,
    network           TEXT          NOT NULL,
    block_number      BIGINT        NOT NULL,
    block_hash        TEXT,
    block_timestamp   TIMESTAMPTZ,
    transaction_index BIGINT,
    contract_address  TEXT,
    stream            TEXT          NOT NULL,
    entry_id          TEXT          NOT NULL,
    item_index        INTEGER       NOT NULL,
    inserted_at       TIMESTAMPTZ   NOT NULL DEFAULT now(),
    sender            TEXT          NOT NULL,
    receiver          TEXT          NOT NULL,
    term_id           TEXT          NOT NULL,
    curve_id          TEXT          NOT NULL,
    assets            NUMERIC(78,0) NOT NULL,
    assets_after_fees NUMERIC(78,0) NOT NULL,
    shares            NUMERIC(78,0) NOT NULL,
    total_shares      NUMERIC(78,0) NOT NULL,
    vault_type        SMALLINT      NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX deposited_events_block_idx ON deposited_events (network, block_number);

CREATE TABLE redeemed_events (
    transaction_hash  TEXT          NOT NULL,
    log_index         BIGINT        NOT NULL,
    network           TEXT          NOT NULL,
    block_number      BIGINT        NOT NULL,
    block_hash        TEXT,
    block_timestamp   TIMESTAMPTZ,
    transaction_index BIGINT,
    contract_address  TEXT,
    stream            TEXT          NOT NULL,
    entry_id          TEXT          NOT NULL,
    item_index        INTEGER       NOT NULL,
    inserted_at       TIMESTAMPTZ   NOT NULL DEFAULT now(),
    sender            TEXT          NOT NULL,
    receiver          TEXT          NOT NULL,
    term_id           TEXT          NOT NULL,
    curve_id          TEXT          NOT NULL,
    shares            NUMERIC(78,0) NOT NULL,
    total_shares      NUMERIC(78,0) NOT NULL,
    assets            NUMERIC(78,0) NOT NULL,
    fees              NUMERIC(78,0) NOT NULL,
    vault_type        SMALLINT      NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX redeemed_events_block_idx ON redeemed_events (network, block_number);

CREATE TABLE share_price_changed_events (
    transaction_hash  TEXT          NOT NULL,
    log_index         BIGINT        NOT NULL,
    network           TEXT          NOT NULL,
    block_number      BIGINT        NOT NULL,
    block_hash        TEXT,
    block_timestamp   TIMESTAMPTZ,
    transaction_index BIGINT,
    contract_address  TEXT,
    stream            TEXT          NOT NULL,
    entry_id          TEXT          NOT NULL,
    item_index        INTEGER       NOT NULL,
    inserted_at       TIMESTAMPTZ   NOT NULL DEFAULT now(),
    term_id           TEXT          NOT NULL,
    curve_id          TEXT          NOT NULL,
    share_price       NUMERIC(78,0) NOT NULL,
    total_assets      NUMERIC(78,0) NOT NULL,
    total_shares      NUMERIC(78,0) NOT NULL,
    vault_type        SMALLINT      NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX share_price_changed_events_block_idx ON share_price_changed_events (network, block_number);

CREATE TABLE generic_events (
    transaction_hash     TEXT        NOT NULL,
    log_index            BIGINT      NOT NULL,
    network              TEXT        NOT NULL,
    block_number         BIGINT      NOT NULL,
    block_hash           TEXT,
    block_timestamp      TIMESTAMPTZ,
    transaction_index    BIGINT,
    contract_address     TEXT,
    stream               TEXT        NOT NULL,
    entry_id             TEXT        NOT NULL,
    item_index           INTEGER     NOT NULL,
    inserted_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    event_name           TEXT        NOT NULL,
    event_signature_hash TEXT,
    -- The event's own fields exactly as received (transaction_information included).
    event_data           JSONB       NOT NULL,
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX generic_events_block_idx ON generic_events (network, block_number);

-- Input that could not be decoded: never dropped, never blocking.
CREATE TABLE dead_letters (
    id          BIGSERIAL   PRIMARY KEY,
    stream      TEXT        NOT NULL,
    entry_id    TEXT        NOT NULL,
    -- Position inside an array entry; NULL when the whole entry was unreadable.
    item_index  INTEGER,
    event_name  TEXT,
    reason      TEXT        NOT NULL,
    -- Exactly the bytes received (the whole entry, or the one bad array item).
    raw_payload BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- A redelivered bad entry is recorded once.
CREATE UNIQUE INDEX dead_letters_source_idx ON dead_letters (stream, entry_id, (coalesce(item_index, -1)));
