-- Level 1 `vault`: the stored vaults a fold changes (ADR 0022: new vaults
-- are COPYed, copy_vaults.sql, and a stored vault the fold only names is
-- left alone, unlocked). Takes the totals from the newest SharePriceChanged
-- and adds the fold's position_count change (from the positions written
-- first). Input: one row per vault, merged by the worker; price columns are
-- those of the newest SharePriceChanged folded, NULL when there is none. The
-- fold's partition claim makes it the only writer of these rows (ADR 0015);
-- they are updated in key order. ON CONFLICT keeps the statement whole if a
-- row is missing after all (it is then inserted).
WITH incoming AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::numeric[], $7::numeric[], $8::numeric[],
                $9::int2[], $10::int8[])
         AS t(term_id, curve_id, block_number, log_index, transaction_hash, total_shares, total_assets, share_price,
              vault_type, position_count_change)
)
INSERT INTO vault AS v (term_id, curve_id, total_shares, total_assets, current_share_price, vault_type,
                        price_block_number, price_log_index, price_transaction_hash, position_count)
SELECT term_id, curve_id, coalesce(total_shares, 0), coalesce(total_assets, 0), coalesce(share_price, 0),
       coalesce(vault_type, 0), block_number, log_index, transaction_hash, position_count_change
FROM incoming
WHERE block_number IS NOT NULL OR position_count_change <> 0
ORDER BY term_id, curve_id
ON CONFLICT (term_id, curve_id) DO UPDATE
-- In SET, v.* is the row being replaced; the price columns change only when
-- the incoming SharePriceChanged is newer than the stored one.
SET position_count = v.position_count + EXCLUDED.position_count,
    total_shares = CASE WHEN vault_price_is_newer(v.price_block_number, v.price_log_index, v.price_transaction_hash,
                                                  EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash)
                        THEN EXCLUDED.total_shares ELSE v.total_shares END,
    total_assets = CASE WHEN vault_price_is_newer(v.price_block_number, v.price_log_index, v.price_transaction_hash,
                                                  EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash)
                        THEN EXCLUDED.total_assets ELSE v.total_assets END,
    current_share_price = CASE WHEN vault_price_is_newer(v.price_block_number, v.price_log_index, v.price_transaction_hash,
                                                         EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash)
                               THEN EXCLUDED.current_share_price ELSE v.current_share_price END,
    vault_type = CASE WHEN vault_price_is_newer(v.price_block_number, v.price_log_index, v.price_transaction_hash,
                                                EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash)
                      THEN EXCLUDED.vault_type ELSE v.vault_type END,
    price_block_number = CASE WHEN vault_price_is_newer(v.price_block_number, v.price_log_index, v.price_transaction_hash,
                                                        EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash)
                              THEN EXCLUDED.price_block_number ELSE v.price_block_number END,
    price_log_index = CASE WHEN vault_price_is_newer(v.price_block_number, v.price_log_index, v.price_transaction_hash,
                                                     EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash)
                           THEN EXCLUDED.price_log_index ELSE v.price_log_index END,
    price_transaction_hash = CASE WHEN vault_price_is_newer(v.price_block_number, v.price_log_index, v.price_transaction_hash,
                                                            EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash)
                                  THEN EXCLUDED.price_transaction_hash ELSE v.price_transaction_hash END
WHERE EXCLUDED.position_count <> 0
   OR vault_price_is_newer(v.price_block_number, v.price_log_index, v.price_transaction_hash,
                           EXCLUDED.price_block_number, EXCLUDED.price_log_index, EXCLUDED.price_transaction_hash)
