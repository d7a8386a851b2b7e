-- Level 1 `vault`: creates every vault the batch names and takes its totals
-- from the newest SharePriceChanged. Rows without price data in this batch
-- carry NULL positions and only lock the vault: ON CONFLICT DO UPDATE locks
-- every conflicting row even when its WHERE is false. That lock serialises all
-- writers of one vault, so the position_count delta that follows is exact.
-- Input: one row per vault (the worker folds the batch; price columns are
-- those of the batch's newest SharePriceChanged, NULL when it has none).
INSERT INTO vault AS v (term_id, curve_id, total_shares, total_assets, current_share_price, vault_type,
                        price_block_number, price_log_index, price_transaction_hash)
SELECT term_id, curve_id, coalesce(total_shares, 0), coalesce(total_assets, 0), coalesce(share_price, 0),
       coalesce(vault_type, 0), block_number, log_index, transaction_hash
FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::numeric[], $7::numeric[], $8::numeric[], $9::int2[])
     AS t(term_id, curve_id, block_number, log_index, transaction_hash, total_shares, total_assets, share_price, vault_type)
ORDER BY term_id, curve_id
ON CONFLICT (term_id, curve_id) DO UPDATE
SET total_shares = EXCLUDED.total_shares, total_assets = EXCLUDED.total_assets,
    current_share_price = EXCLUDED.current_share_price, vault_type = EXCLUDED.vault_type,
    price_block_number = EXCLUDED.price_block_number, price_log_index = EXCLUDED.price_log_index,
    price_transaction_hash = EXCLUDED.price_transaction_hash
WHERE EXCLUDED.price_block_number IS NOT NULL
  AND (v.price_block_number IS NULL
       OR (v.price_block_number, v.price_log_index, v.price_transaction_hash)
          < (EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash))
