-- Inserts one batch of atom_created_events; returns the keys that were new (a redelivered
-- event conflicts and changes nothing). Parameters $1..$11 are the common
-- chain-position columns, the rest are the event's own fields. The worker
-- sends the rows sorted by key (persistence.rs), the order in which
-- concurrent batches take the key's index locks; unnest keeps it, so the
-- statement sorts nothing (ADR 0021).
INSERT INTO atom_created_events (transaction_hash, log_index, network, block_number, block_hash, block_timestamp, transaction_index, contract_address, stream, entry_id, item_index, creator, term_id, atom_data, atom_data_text, atom_wallet)
SELECT t.transaction_hash, t.log_index, t.network, t.block_number, t.block_hash, to_timestamp(t.block_timestamp), t.transaction_index, t.contract_address, t.stream, t.entry_id, t.item_index, t.creator, t.term_id, t.atom_data, t.atom_data_text, t.atom_wallet
FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::int8[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::text[], $13::text[], $14::bytea[], $15::text[], $16::text[])
     AS t(transaction_hash, log_index, network, block_number, block_hash, block_timestamp, transaction_index, contract_address, stream, entry_id, item_index, creator, term_id, atom_data, atom_data_text, atom_wallet)
ON CONFLICT (transaction_hash, log_index) DO NOTHING
RETURNING transaction_hash, log_index
