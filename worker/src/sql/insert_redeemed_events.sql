-- Inserts one batch of redeemed_events; returns the keys that were new (a redelivered
-- event conflicts and changes nothing). Parameters $1..$11 are the common
-- chain-position columns, the rest are the event's own fields. The worker
-- sends the rows sorted by key (persistence.rs), the order in which
-- concurrent batches take the key's index locks; unnest keeps it, so the
-- statement sorts nothing (ADR 0021).
INSERT INTO redeemed_events (transaction_hash, log_index, network, block_number, block_hash, block_timestamp, transaction_index, contract_address, stream, entry_id, item_index, sender, receiver, term_id, curve_id, shares, total_shares, assets, fees, vault_type)
SELECT t.transaction_hash, t.log_index, t.network, t.block_number, t.block_hash, to_timestamp(t.block_timestamp), t.transaction_index, t.contract_address, t.stream, t.entry_id, t.item_index, t.sender, t.receiver, t.term_id, t.curve_id, t.shares, t.total_shares, t.assets, t.fees, t.vault_type
FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::int8[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::text[], $13::text[], $14::text[], $15::text[], $16::numeric[], $17::numeric[], $18::numeric[], $19::numeric[], $20::int2[])
     AS t(transaction_hash, log_index, network, block_number, block_hash, block_timestamp, transaction_index, contract_address, stream, entry_id, item_index, sender, receiver, term_id, curve_id, shares, total_shares, assets, fees, vault_type)
ON CONFLICT (transaction_hash, log_index) DO NOTHING
RETURNING transaction_hash, log_index
