-- Copies the compatibility declarations of the migrations this binary embeds
-- (`-- compatible-with-binaries-from: N`) into the database, where binaries
-- that do not know those migrations read them (migrations/README.md).
INSERT INTO schema_compatibility (version, oldest_compatible)
SELECT * FROM unnest($1::int8[], $2::int8[])
ON CONFLICT (version) DO UPDATE SET oldest_compatible = EXCLUDED.oldest_compatible
