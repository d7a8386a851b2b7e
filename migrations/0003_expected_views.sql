-- From-scratch definitions of every derived table (SPEC section 3), computed
-- from the event tables alone. `verify` compares the live tables with these
-- views and `rebuild` rewrites the live tables from them. They are written
-- independently of the incremental write path on purpose: they are its oracle.

CREATE VIEW atom_expected AS
SELECT DISTINCT ON (term_id)
       term_id,
       creator          AS creator_id,
       atom_wallet      AS wallet_id,
       atom_data_text   AS data,
       CASE WHEN atom_data_text IS NULL THEN atom_data END AS raw_data,
       block_number, log_index, transaction_hash,
       block_timestamp  AS created_at
FROM atom_created_events
ORDER BY term_id, block_number DESC, log_index DESC, transaction_hash DESC;

CREATE VIEW triple_expected AS
SELECT DISTINCT ON (term_id)
       term_id, subject_id, predicate_id, object_id,
       creator AS creator_id, counter_term_id,
       block_number, log_index, transaction_hash,
       block_timestamp AS created_at
FROM triple_created_events
ORDER BY term_id, block_number DESC, log_index DESC, transaction_hash DESC;

CREATE VIEW position_expected AS
WITH moves AS (
    SELECT receiver AS account_id, term_id, curve_id, block_number, log_index,
           transaction_hash, total_shares, assets_after_fees AS deposited, 0::numeric AS redeemed
    FROM deposited_events
    UNION ALL
    SELECT receiver, term_id, curve_id, block_number, log_index,
           transaction_hash, total_shares, 0::numeric, assets
    FROM redeemed_events
)
SELECT account_id, term_id, curve_id,
       (array_agg(total_shares ORDER BY block_number DESC, log_index DESC, transaction_hash DESC))[1] AS shares,
       sum(deposited) AS total_deposit_assets_after_total_fees,
       sum(redeemed)  AS total_redeem_assets_for_receiver,
       (array_agg(block_number ORDER BY block_number DESC, log_index DESC, transaction_hash DESC))[1] AS block_number,
       (array_agg(log_index    ORDER BY block_number DESC, log_index DESC, transaction_hash DESC))[1] AS log_index,
       (array_agg(transaction_hash ORDER BY block_number DESC, log_index DESC, transaction_hash DESC))[1] AS transaction_hash
FROM moves
GROUP BY account_id, term_id, curve_id;

CREATE VIEW vault_expected AS
WITH keys AS (
    SELECT term_id, curve_id FROM deposited_events
    UNION SELECT term_id, curve_id FROM redeemed_events
    UNION SELECT term_id, curve_id FROM share_price_changed_events
), newest_price AS (
    SELECT DISTINCT ON (term_id, curve_id)
           term_id, curve_id, total_shares, total_assets, share_price, vault_type,
           block_number, log_index, transaction_hash
    FROM share_price_changed_events
    ORDER BY term_id, curve_id, block_number DESC, log_index DESC, transaction_hash DESC
), positions AS (
    SELECT term_id, curve_id, count(*) AS position_count
    FROM position_expected WHERE shares > 0
    GROUP BY term_id, curve_id
)
SELECT k.term_id, k.curve_id,
       coalesce(p.total_shares, 0) AS total_shares,
       coalesce(p.total_assets, 0) AS total_assets,
       coalesce(p.share_price, 0)  AS current_share_price,
       coalesce(p.vault_type, 0)::smallint AS vault_type,
       div(coalesce(p.total_shares, 0) * coalesce(p.share_price, 0), 1000000000000000000) AS market_cap,
       coalesce(c.position_count, 0) AS position_count,
       p.block_number AS price_block_number,
       p.log_index    AS price_log_index,
       p.transaction_hash AS price_transaction_hash
FROM keys k
LEFT JOIN newest_price p USING (term_id, curve_id)
LEFT JOIN positions c USING (term_id, curve_id);

CREATE VIEW term_expected AS
WITH claims AS (
    SELECT term_id AS id, 'Atom' AS type, term_id AS atom_id, NULL::text AS triple_id FROM atom_created_events
    UNION ALL SELECT term_id, 'Triple', NULL, term_id FROM triple_created_events
    UNION ALL SELECT counter_term_id, 'CounterTriple', NULL, term_id FROM triple_created_events
    UNION ALL SELECT term_id, 'Unknown', NULL, NULL FROM vault_expected
), typed AS (
    SELECT DISTINCT ON (id) id, type, atom_id, triple_id
    FROM claims
    ORDER BY id, term_type_rank(type) DESC, triple_id
), totals AS (
    SELECT term_id AS id, sum(total_assets) AS total_assets, sum(market_cap) AS total_market_cap
    FROM vault_expected GROUP BY term_id
)
SELECT t.id, t.type, t.atom_id, t.triple_id,
       coalesce(s.total_assets, 0)     AS total_assets,
       coalesce(s.total_market_cap, 0) AS total_market_cap
FROM typed t LEFT JOIN totals s USING (id);

CREATE VIEW triple_vault_expected AS
SELECT t.term_id, t.counter_term_id, v.curve_id,
       sum(v.total_shares)   AS total_shares,
       sum(v.total_assets)   AS total_assets,
       sum(v.position_count)::bigint AS position_count,
       sum(v.market_cap)     AS market_cap
FROM triple_expected t
JOIN vault_expected v ON v.term_id IN (t.term_id, t.counter_term_id)
GROUP BY t.term_id, t.counter_term_id, v.curve_id;

CREATE VIEW triple_term_expected AS
SELECT t.term_id, t.counter_term_id,
       coalesce(sum(tv.total_assets), 0)           AS total_assets,
       coalesce(sum(tv.market_cap), 0)             AS total_market_cap,
       coalesce(sum(tv.position_count), 0)::bigint AS total_position_count,
       t.subject_id, t.predicate_id, t.object_id
FROM triple_expected t
LEFT JOIN triple_vault_expected tv USING (term_id, counter_term_id)
GROUP BY t.term_id, t.counter_term_id, t.subject_id, t.predicate_id, t.object_id;

CREATE VIEW predicate_object_expected AS
SELECT t.predicate_id, t.object_id,
       count(*)                       AS triple_count,
       sum(tt.total_position_count)::bigint AS total_position_count,
       sum(tt.total_market_cap)       AS total_market_cap
FROM triple_expected t
JOIN triple_term_expected tt USING (term_id, counter_term_id)
GROUP BY t.predicate_id, t.object_id;

CREATE VIEW subject_predicate_expected AS
SELECT t.subject_id, t.predicate_id,
       count(*)                       AS triple_count,
       sum(tt.total_position_count)::bigint AS total_position_count,
       sum(tt.total_market_cap)       AS total_market_cap
FROM triple_expected t
JOIN triple_term_expected tt USING (term_id, counter_term_id)
GROUP BY t.subject_id, t.predicate_id;
