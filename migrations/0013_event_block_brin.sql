-- compatible-with-binaries-from: 10
-- Issue 24 (ADR 0021): PostgreSQL CPU per event.
--
-- The (network, block_number) B-tree of each event table costs every stored
-- event an index insertion (about a fifth of the insert's time and of its
-- WAL), and only a reorg (`reorg.rs`) and `rollback` read it, to find a
-- network's events at or above a block. Events arrive nearly in block order,
-- so a BRIN index (one summary per 128 pages) answers those range queries
-- while costing an insert almost nothing. `autosummarize` lets autovacuum
-- summarize new ranges; an unsummarized range is always scanned, so the
-- answer is exact either way.
--
-- N = 10: an index change; every statement reads the same rows.
DROP INDEX atom_created_events_block_idx;
DROP INDEX triple_created_events_block_idx;
DROP INDEX deposited_events_block_idx;
DROP INDEX redeemed_events_block_idx;
DROP INDEX share_price_changed_events_block_idx;
DROP INDEX generic_events_block_idx;
CREATE INDEX atom_created_events_block_brin ON atom_created_events USING brin (network, block_number) WITH (autosummarize = on);
CREATE INDEX triple_created_events_block_brin ON triple_created_events USING brin (network, block_number) WITH (autosummarize = on);
CREATE INDEX deposited_events_block_brin ON deposited_events USING brin (network, block_number) WITH (autosummarize = on);
CREATE INDEX redeemed_events_block_brin ON redeemed_events USING brin (network, block_number) WITH (autosummarize = on);
CREATE INDEX share_price_changed_events_block_brin ON share_price_changed_events USING brin (network, block_number) WITH (autosummarize = on);
CREATE INDEX generic_events_block_brin ON generic_events USING brin (network, block_number) WITH (autosummarize = on);
