-- The network this database holds (migration 0009), once per batch. The row
-- is never updated after its insert, so this plain read takes no lock and
-- does not wait for writers.
SELECT network FROM database_network
