-- Bad input, recorded once per (stream, entry, item) even when redelivered.
INSERT INTO dead_letters (stream, entry_id, item_index, event_name, reason, raw_payload)
SELECT d.stream, d.entry_id, d.item_index, d.event_name, d.reason, d.raw_payload
FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::bytea[])
     AS d(stream, entry_id, item_index, event_name, reason, raw_payload)
ON CONFLICT DO NOTHING
