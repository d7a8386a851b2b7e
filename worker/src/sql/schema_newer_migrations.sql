-- For a binary built for schema $1 running on a newer schema: each applied
-- migration newer than $1 with the oldest binary schema it declares to keep
-- working (NULL: no declaration, which counts as incompatible).
SELECT m.version, c.oldest_compatible
FROM _sqlx_migrations m
LEFT JOIN schema_compatibility c ON c.version = m.version
WHERE m.success AND m.version > $1
ORDER BY m.version
