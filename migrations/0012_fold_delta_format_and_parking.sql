-- compatible-with-binaries-from: 10
-- Issue 22 (ADR 0019): operating the fold.
--
-- `fold_delta.format`: the version of a delta's encoding. Format 1 is the JSON
-- of ADR 0015, which binaries of schema 10 write without naming it (the
-- default fills it in). A binary folds only formats it knows; a newer format
-- stays in `fold_delta` for a newer binary (never parked, never misread).
--
-- `fold_delta_parked`: deltas that cannot be folded (undecodable, or their
-- statements fail with a data-class error), moved out of `fold_delta` in the
-- fold that found them, with the reason, so that the rest of their partition
-- and every other partition keep folding. `postgres-writer fold-deltas replay`
-- moves them back once the cause is fixed. Same columns as `fold_delta`: a
-- parked delta is the delta itself, not a copy.
--
-- N = 10: additive (a defaulted column, a new table). Binaries of schema 10
-- write format 1 (the default) and read `fold_delta` as before; they never
-- park (a delta they cannot fold stalls their own folds, as in schema 10).
ALTER TABLE fold_delta ADD COLUMN format int2 NOT NULL DEFAULT 1;

CREATE TABLE fold_delta_parked (
    id int8 PRIMARY KEY,
    partition int2 NOT NULL,
    created_at timestamptz NOT NULL,
    format int2 NOT NULL,
    changes text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    -- 'undecodable' or 'data' (SQLSTATE class 22/23 when applied alone).
    kind text NOT NULL,
    sqlstate text,
    reason text NOT NULL
);
ALTER TABLE fold_delta_parked ALTER COLUMN changes SET STORAGE EXTERNAL;
