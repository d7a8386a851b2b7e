-- compatible-with-binaries-from: 6
-- Additive only (a nullable column, a sequence, a table): binaries of schema
-- 6 and 7 keep claiming and completing analytics terms as before (by version
-- alone) next to binaries of this schema. See migrations/README.md and ADR 0012.

-- Analytics claim tokens. Each claim stamps the row with a fresh token;
-- completion, release and failure touch a row only while it still carries the
-- claimer's token. A worker whose lease expired (another worker claimed the
-- term since, or the row was completed and queued anew at version 0) can no
-- longer delete, release or fail a row it does not own.
CREATE SEQUENCE analytics_claim_token_seq;
ALTER TABLE analytics_queue ADD COLUMN claim_token BIGINT;

-- The oldest binary schema each migration stays compatible with, written by
-- `postgres-writer migrate` from the `-- compatible-with-binaries-from: N`
-- line of every migration file (from 0007 on). A binary running against a
-- newer schema than its own reads the declarations of the migrations it does
-- not know from here: it stays ready when each of them declares N <= its own
-- schema version.
CREATE TABLE schema_compatibility (
    version           BIGINT PRIMARY KEY,
    oldest_compatible BIGINT NOT NULL CHECK (oldest_compatible <= version)
);
