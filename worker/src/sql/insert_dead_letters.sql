-- Bad input, recorded once per (stream, entry, item) even when redelivered
-- (also after the letter was replayed: a redelivery changes nothing).
INSERT INTO dead_letters (stream, entry_id, item_index, event_name, reason, raw_payload,
                          envelope_network, event_signature_hash)
SELECT d.stream, d.entry_id, d.item_index, d.event_name, d.reason, d.raw_payload,
       d.envelope_network, d.event_signature_hash
FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::bytea[],
            $7::text[], $8::text[])
     AS d(stream, entry_id, item_index, event_name, reason, raw_payload,
          envelope_network, event_signature_hash)
ON CONFLICT DO NOTHING
