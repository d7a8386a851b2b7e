-- Level 1 `triple`: the newest TripleCreated per term wins.
INSERT INTO triple AS tr (term_id, subject_id, predicate_id, object_id, creator_id, counter_term_id, block_number, log_index, transaction_hash, created_at)
SELECT DISTINCT ON (t.term_id)
       t.term_id, t.subject_id, t.predicate_id, t.object_id, t.creator_id, t.counter_term_id,
       t.block_number, t.log_index, t.transaction_hash, to_timestamp(t.block_timestamp)
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[], $9::text[], $10::int8[])
     AS t(term_id, subject_id, predicate_id, object_id, creator_id, counter_term_id, block_number, log_index, transaction_hash, block_timestamp)
ORDER BY t.term_id, t.block_number DESC, t.log_index DESC, t.transaction_hash DESC
ON CONFLICT (term_id) DO UPDATE
SET subject_id = EXCLUDED.subject_id, predicate_id = EXCLUDED.predicate_id, object_id = EXCLUDED.object_id,
    creator_id = EXCLUDED.creator_id, counter_term_id = EXCLUDED.counter_term_id,
    block_number = EXCLUDED.block_number, log_index = EXCLUDED.log_index,
    transaction_hash = EXCLUDED.transaction_hash, created_at = EXCLUDED.created_at
WHERE (tr.block_number, tr.log_index, tr.transaction_hash) < (EXCLUDED.block_number, EXCLUDED.log_index, EXCLUDED.transaction_hash)
