-- compatible-with-binaries-from: 6
-- One database (or schema) holds one network. The base tables (positions,
-- vaults, terms, …) have no network column, so the events of two networks
-- written to one database would silently mix. The database's network is
-- recorded by its first write (bind_database_network.sql) and every batch
-- checks it (select_database_network.sql): events of another network are
-- refused, nothing of them is written.
--
-- One row at most: the primary key on a constant makes two first writes of
-- different networks conflict, so the database decides which one wins. The
-- row is never updated, so the per-batch check is a plain read without locks.
CREATE TABLE database_network (
    singleton BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    network   TEXT        NOT NULL,
    bound_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A database written before this migration: bind it to its network when its
-- events name exactly one (min and max of the leading index column are
-- index lookups, not scans). A database that already mixes networks stays
-- unbound, and its next write binds it; it needs a rebuild per network.
INSERT INTO database_network (network)
SELECT min(lo)
FROM (
    SELECT min(network) AS lo, max(network) AS hi FROM atom_created_events
    UNION ALL SELECT min(network), max(network) FROM triple_created_events
    UNION ALL SELECT min(network), max(network) FROM deposited_events
    UNION ALL SELECT min(network), max(network) FROM redeemed_events
    UNION ALL SELECT min(network), max(network) FROM share_price_changed_events
    UNION ALL SELECT min(network), max(network) FROM generic_events
) seen
HAVING min(lo) IS NOT NULL AND min(lo) = max(hi);
