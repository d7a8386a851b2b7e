-- compatible-with-binaries-from: 10
-- Issue 15 (ADR 0015): batch transactions no longer lock hot rows. A batch
-- appends its events and, in the same transaction, one insert-only delta row
-- per fold partition it touches: that partition's share of the batch, folded
-- per key (newest balance and price by chain order, exact decimal sums, term
-- type claims), as JSON text. Partition owners fold the deltas into
-- `position`, `vault`, `term` and the analytics queue.
--
-- A term, its vaults and their positions belong to one partition (a stable
-- hash of the term id, computed by the worker: worker/src/fold.rs), so one
-- folder owns all rows it writes. A folder owns a partition while it holds
-- its `fold_partition` row locked (`FOR UPDATE SKIP LOCKED`: no folder ever
-- waits for another), deletes its deltas and writes their effect in one
-- transaction: each delta is folded exactly once, and a crash mid-fold rolls
-- the deletion back with the effect.
--
-- N = 10: the base tables alone no longer hold every committed effect (those
-- still in `fold_delta` are missing), so an older binary's verify, rebuild or
-- rollback would misread them.
CREATE TABLE fold_partition (
    partition int2 PRIMARY KEY,
    folded_at timestamptz NOT NULL DEFAULT now(),
    folded_deltas int8 NOT NULL DEFAULT 0
) WITH (fillfactor = 50);

-- 32 partitions: the worker's fold::PARTITIONS must match (a test checks it).
INSERT INTO fold_partition (partition) SELECT generate_series(0, 31);

CREATE TABLE fold_delta (
    id int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition int2 NOT NULL,
    -- Set at insert, right before the batch commits: the fold delay is
    -- measured from here.
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    changes text NOT NULL
) WITH (autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_scale_factor = 0,
        autovacuum_vacuum_insert_threshold = 1000, autovacuum_vacuum_insert_scale_factor = 0,
        toast_tuple_target = 8160);
-- A delta (a few kB) is written once and read once: kept in the row, never
-- compressed (pglz on insert and again on read cost more than it saves).
ALTER TABLE fold_delta ALTER COLUMN changes SET STORAGE EXTERNAL;

CREATE INDEX fold_delta_partition ON fold_delta (partition, id);
