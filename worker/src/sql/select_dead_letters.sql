-- Letters matching the filters of `dead-letters list` / `show` / `replay`
-- (each filter NULL = any): ids, stream, a case-insensitive substring of the
-- reason, and 'pending' (not replayed) / 'replayed' / 'all'. $5: newest first
-- (list) rather than oldest first (replay, in the order they were written).
-- Times as UTC text: the binary has no date-time library.
SELECT id, stream, entry_id, item_index, event_name, reason, raw_payload,
       envelope_network, event_signature_hash,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at,
       replay_attempts,
       to_char(last_replay_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS last_replay_at,
       first_reason,
       to_char(replayed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS replayed_at,
       replay_result, replay_note
FROM dead_letters
WHERE ($1::bigint[] IS NULL OR id = ANY($1))
  AND ($2::text IS NULL OR stream = $2)
  AND ($3::text IS NULL OR strpos(lower(reason), lower($3)) > 0)
  AND ($4::text = 'all'
       OR ($4 = 'pending' AND replayed_at IS NULL)
       OR ($4 = 'replayed' AND replayed_at IS NOT NULL))
ORDER BY CASE WHEN $5::bool THEN -id ELSE id END
LIMIT $6
