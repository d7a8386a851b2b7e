-- Level 1 `position` (account = receiver): `shares` from the newest
-- Deposited/Redeemed, deposit and redeem totals as commutative sums.
-- Callers hold the lock of every vault involved (upsert_vaults.sql).
WITH moves AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::numeric[], $8::numeric[], $9::numeric[])
         AS m(account_id, term_id, curve_id, block_number, log_index, transaction_hash, total_shares, deposited, redeemed)
), per_position AS (
    SELECT account_id, term_id, curve_id,
           (array_agg(total_shares     ORDER BY block_number DESC, log_index DESC, transaction_hash DESC))[1] AS shares,
           (array_agg(block_number     ORDER BY block_number DESC, log_index DESC, transaction_hash DESC))[1] AS block_number,
           (array_agg(log_index        ORDER BY block_number DESC, log_index DESC, transaction_hash DESC))[1] AS log_index,
           (array_agg(transaction_hash ORDER BY block_number DESC, log_index DESC, transaction_hash DESC))[1] AS transaction_hash,
           sum(deposited) AS deposited,
           sum(redeemed)  AS redeemed
    FROM moves
    GROUP BY account_id, term_id, curve_id
)
INSERT INTO position AS p (account_id, term_id, curve_id, shares, total_deposit_assets_after_total_fees,
                           total_redeem_assets_for_receiver, block_number, log_index, transaction_hash)
SELECT account_id, term_id, curve_id, shares, deposited, redeemed, block_number, log_index, transaction_hash
FROM per_position
ORDER BY account_id, term_id, curve_id
ON CONFLICT (account_id, term_id, curve_id) DO UPDATE
SET total_deposit_assets_after_total_fees = p.total_deposit_assets_after_total_fees + EXCLUDED.total_deposit_assets_after_total_fees,
    total_redeem_assets_for_receiver = p.total_redeem_assets_for_receiver + EXCLUDED.total_redeem_assets_for_receiver,
    -- Keep whichever of the stored and incoming share balances is newer.
    (shares, block_number, log_index, transaction_hash) = (
        SELECT c.shares, c.block_number, c.log_index, c.transaction_hash
        FROM (VALUES (p.shares, p.block_number, p.log_index, p.transaction_hash),
                     (EXCLUDED.shares, EXCLUDED.block_number, EXCLUDED.log_index, EXCLUDED.transaction_hash))
             AS c(shares, block_number, log_index, transaction_hash)
        ORDER BY c.block_number DESC, c.log_index DESC, c.transaction_hash DESC
        LIMIT 1)
