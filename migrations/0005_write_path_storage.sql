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
