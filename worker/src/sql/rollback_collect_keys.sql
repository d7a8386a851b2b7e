-- Keys of every derived row touched by the events a rollback removes
-- (network $1, block_number >= $2; with a stream $3, only that stream's
-- entries before position $4: a reorg notice's fence, ADR 0018), one row per
-- key with its table's name. Collected before the events are deleted.
CREATE TEMP TABLE rollback_keys ON COMMIT DROP AS
SELECT 'atom' AS derived, term_id AS k1, NULL::text AS k2, NULL::text AS k3
FROM atom_created_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'triple', term_id, NULL, NULL
FROM triple_created_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'position', receiver, term_id, curve_id
FROM deposited_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'position', receiver, term_id, curve_id
FROM redeemed_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'vault', term_id, curve_id, NULL
FROM deposited_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'vault', term_id, curve_id, NULL
FROM redeemed_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'vault', term_id, curve_id, NULL
FROM share_price_changed_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
-- Terms: atoms, triples and their counter terms, vault terms.
UNION SELECT 'term', term_id, NULL, NULL
FROM atom_created_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'term', term_id, NULL, NULL
FROM triple_created_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'term', counter_term_id, NULL, NULL
FROM triple_created_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'term', term_id, NULL, NULL
FROM deposited_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'term', term_id, NULL, NULL
FROM redeemed_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
UNION SELECT 'term', term_id, NULL, NULL
FROM share_price_changed_events WHERE network = $1 AND block_number >= $2
    AND ($3::text IS NULL OR (stream = $3 AND stream_entry_position(entry_id) < stream_entry_position($4)))
