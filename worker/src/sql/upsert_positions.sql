-- Level 1 `position` (account = receiver): the stored positions a fold
-- changes (ADR 0022: new positions are COPYed, copy_positions.sql). Input:
-- one row per position, merged by the worker: the newest Deposited/Redeemed
-- folded (its `shares` and chain position) and the deposit and redeem sums.
--
-- `shares` keeps whichever of the stored and incoming balances is newer; the
-- sums add up (commutative). Each row records what this write did to its
-- vault's position_count (became active: +1, inactive: -1), computed from
-- the row it replaces while holding that row's lock, so concurrent writers of
-- one position each see the other's committed row. Returns the change per
-- vault, which upsert_vaults.sql adds to position_count (ADR 0007).
WITH incoming AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::numeric[], $8::numeric[], $9::numeric[])
         AS m(account_id, term_id, curve_id, block_number, log_index, transaction_hash, shares, deposited, redeemed)
), written AS (
    INSERT INTO position AS p (account_id, term_id, curve_id, shares, total_deposit_assets_after_total_fees,
                               total_redeem_assets_for_receiver, block_number, log_index, transaction_hash,
                               position_count_change)
    SELECT account_id, term_id, curve_id, shares, deposited, redeemed, block_number, log_index, transaction_hash,
           (shares > 0)::int::int2
    FROM incoming
    ORDER BY account_id, term_id, curve_id
    ON CONFLICT (account_id, term_id, curve_id) DO UPDATE
    -- In SET, p.* is the row being replaced.
    SET total_deposit_assets_after_total_fees = p.total_deposit_assets_after_total_fees + EXCLUDED.total_deposit_assets_after_total_fees,
        total_redeem_assets_for_receiver = p.total_redeem_assets_for_receiver + EXCLUDED.total_redeem_assets_for_receiver,
        shares = CASE WHEN (EXCLUDED.block_number, EXCLUDED.log_index, EXCLUDED.transaction_hash)
                           > (p.block_number, p.log_index, p.transaction_hash)
                      THEN EXCLUDED.shares ELSE p.shares END,
        block_number = greatest(p.block_number, EXCLUDED.block_number),
        log_index = CASE WHEN (EXCLUDED.block_number, EXCLUDED.log_index, EXCLUDED.transaction_hash)
                              > (p.block_number, p.log_index, p.transaction_hash)
                         THEN EXCLUDED.log_index ELSE p.log_index END,
        transaction_hash = CASE WHEN (EXCLUDED.block_number, EXCLUDED.log_index, EXCLUDED.transaction_hash)
                                     > (p.block_number, p.log_index, p.transaction_hash)
                                THEN EXCLUDED.transaction_hash ELSE p.transaction_hash END,
        position_count_change =
            (CASE WHEN (EXCLUDED.block_number, EXCLUDED.log_index, EXCLUDED.transaction_hash)
                       > (p.block_number, p.log_index, p.transaction_hash)
                  THEN EXCLUDED.shares ELSE p.shares END > 0)::int::int2
            - (p.shares > 0)::int::int2
    RETURNING p.term_id, p.curve_id, p.position_count_change
)
SELECT term_id, curve_id, sum(position_count_change)::int8 AS change
FROM written
GROUP BY term_id, curve_id
HAVING sum(position_count_change) <> 0
