-- Level 1 `position` (account = receiver) and `vault.position_count`, in one
-- statement. Input: one row per position, already folded by the worker: the
-- newest Deposited/Redeemed of the batch (its `shares` and chain position)
-- and the batch's deposit and redeem sums.
--
-- `shares` keeps whichever of the stored and incoming balances is newer;
-- the sums add up (commutative). position_count moves by the positions that
-- became active (shares > 0) or inactive. That delta is exact because the
-- caller holds the lock of every vault involved (upsert_vaults.sql) and every
-- writer of a position takes its vault's lock first: no other transaction can
-- change these positions between this statement's snapshot (`before`) and
-- its updates. ADR 0007.
WITH incoming AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], $7::numeric[], $8::numeric[], $9::numeric[])
         AS m(account_id, term_id, curve_id, block_number, log_index, transaction_hash, shares, deposited, redeemed)
), before AS (
    SELECT p.account_id, p.term_id, p.curve_id, p.shares > 0 AS active
    FROM position p
    JOIN incoming m USING (account_id, term_id, curve_id)
), after AS (
    INSERT INTO position AS p (account_id, term_id, curve_id, shares, total_deposit_assets_after_total_fees,
                               total_redeem_assets_for_receiver, block_number, log_index, transaction_hash)
    SELECT account_id, term_id, curve_id, shares, deposited, redeemed, block_number, log_index, transaction_hash
    FROM incoming
    ORDER BY account_id, term_id, curve_id
    ON CONFLICT (account_id, term_id, curve_id) DO UPDATE
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
                                THEN EXCLUDED.transaction_hash ELSE p.transaction_hash END
    RETURNING p.account_id, p.term_id, p.curve_id, p.shares > 0 AS active
), delta AS (
    SELECT a.term_id, a.curve_id,
           sum(a.active::int - coalesce(b.active, false)::int) AS change
    FROM after a
    LEFT JOIN before b USING (account_id, term_id, curve_id)
    GROUP BY a.term_id, a.curve_id
)
UPDATE vault v
SET position_count = v.position_count + d.change
FROM delta d
WHERE v.term_id = d.term_id AND v.curve_id = d.curve_id AND d.change <> 0
