-- Marks claimed terms done, in the transaction that did their work.
DELETE FROM analytics_queue WHERE term_id = ANY($1::text[])
