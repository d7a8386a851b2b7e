-- Level 1 `atom`: the newest AtomCreated per term wins, whatever the arrival
-- order. Rows are locked in term_id order (the global lock order).
INSERT INTO atom AS a (term_id, creator_id, wallet_id, data, raw_data, block_number, log_index, transaction_hash, created_at)
SELECT DISTINCT ON (t.term_id)
       t.term_id, t.creator_id, t.wallet_id, t.data, t.raw_data, t.block_number, t.log_index, t.transaction_hash,
       to_timestamp(t.block_timestamp)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::int8[], $7::int8[], $8::text[], $9::int8[])
     AS t(term_id, creator_id, wallet_id, data, raw_data, block_number, log_index, transaction_hash, block_timestamp)
ORDER BY t.term_id, t.block_number DESC, t.log_index DESC, t.transaction_hash DESC
ON CONFLICT (term_id) DO UPDATE
SET creator_id = EXCLUDED.creator_id, wallet_id = EXCLUDED.wallet_id, data = EXCLUDED.data,
    raw_data = EXCLUDED.raw_data, block_number = EXCLUDED.block_number, log_index = EXCLUDED.log_index,
    transaction_hash = EXCLUDED.transaction_hash, created_at = EXCLUDED.created_at
WHERE (a.block_number, a.log_index, a.transaction_hash) < (EXCLUDED.block_number, EXCLUDED.log_index, EXCLUDED.transaction_hash)
