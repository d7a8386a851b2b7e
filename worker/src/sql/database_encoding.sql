-- The database's encoding (fixed when it was created): which characters text
-- columns can hold. Named in the dead letter of an item refused with an
-- encoding error (SQLSTATE 22021, 22P05).
SELECT current_setting('server_encoding')
