COPY position (account_id, term_id, curve_id, shares, total_deposit_assets_after_total_fees,
               total_redeem_assets_for_receiver, block_number, log_index, transaction_hash,
               position_count_change)
FROM STDIN
