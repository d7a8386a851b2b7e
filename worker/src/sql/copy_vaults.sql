COPY vault (term_id, curve_id, total_shares, total_assets, current_share_price, vault_type,
            price_block_number, price_log_index, price_transaction_hash, position_count)
FROM STDIN
