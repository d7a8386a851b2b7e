-- Storage settings of the tables every batch updates in place. Free space in
-- each page (fillfactor) lets PostgreSQL keep an updated row on its page
-- without touching indexes (HOT updates); frequent autovacuum keeps the dead
-- rows of constantly rewritten tables (the analytics queue above all: every
-- term is inserted and deleted again) from slowing every scan. See ADR 0007.
ALTER TABLE vault             SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE position          SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE term              SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE triple_vault      SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE triple_term       SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE predicate_object  SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE subject_predicate SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
-- A small table with a huge turnover: vacuum after a fixed number of dead rows.
ALTER TABLE analytics_queue   SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
                                   autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 2000,
                                   autovacuum_vacuum_cost_delay = 0);

-- position_count is now maintained from the positions a batch changes
-- (upsert_positions.sql) instead of recounted, so nothing reads this index;
-- without it, a change of `shares` can be a HOT update.
DROP INDEX position_vault_active_idx;

-- What the last write of a position did to its vault's position_count (+1: it
-- became active, -1: inactive, 0: neither). The position upsert computes it
-- from the row it replaces, under that row's lock, and returns it, so the
-- vault's count moves by exact deltas without any vault lock being held
-- while positions are written (PostgreSQL before 18 cannot RETURN old values).
ALTER TABLE position ADD COLUMN position_count_change SMALLINT NOT NULL DEFAULT 0;

-- Whether an incoming SharePriceChanged (new_*) is newer than the one a vault's
-- totals come from (old_*; NULL: none yet). Used by upsert_vaults.sql.
CREATE FUNCTION vault_price_is_newer(old_block BIGINT, old_log BIGINT, old_tx TEXT,
                                     new_block BIGINT, new_log BIGINT, new_tx TEXT)
RETURNS BOOLEAN LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN new_block IS NOT NULL
   AND (old_block IS NULL OR (old_block, old_log, old_tx) < (new_block, new_log, new_tx));
