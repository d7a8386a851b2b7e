-- Parks deltas that cannot be folded (ADR 0019), in the fold transaction that
-- took them from fold_delta: the move commits with the rest of the fold.
INSERT INTO fold_delta_parked (id, partition, created_at, format, changes, kind, sqlstate, reason)
SELECT * FROM unnest($1::int8[], $2::int2[], $3::text[]::timestamptz[], $4::int2[], $5::text[],
                     $6::text[], $7::text[], $8::text[])
ON CONFLICT (id) DO NOTHING
