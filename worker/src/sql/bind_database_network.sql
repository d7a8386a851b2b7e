-- The first write records the database's network ($1). Two first writes at
-- once conflict on the one-row primary key: the second waits for the first
-- to commit (or roll back) and then inserts nothing, so exactly one network
-- wins; the loser reads the winner with select_database_network.sql.
INSERT INTO database_network (network) VALUES ($1)
ON CONFLICT DO NOTHING
RETURNING network
