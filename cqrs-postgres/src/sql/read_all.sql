-- A batch of the global log in commit-safe order.
-- $1, $2 the position read so far (transaction id, sequence), $3 stream types and
-- $4 event types to keep (empty: all), $5 the batch size.
--
-- Only rows of transactions below the horizon are returned (src/db/horizon.rs): no
-- event can later appear below it, so none at a position this batch has passed.
WITH {horizon}
SELECT sequence, transaction_id, stream_type, stream_id, stream_version, event_id,
       event_type, schema_version, payload, metadata::text AS metadata, recorded_at
FROM {schema}.events
WHERE (transaction_id, sequence) > ($1::bigint, $2::bigint)
  AND transaction_id < (SELECT horizon FROM horizon)
  AND (cardinality($3::text[]) = 0 OR stream_type = ANY ($3::text[]))
  AND (cardinality($4::text[]) = 0 OR event_type = ANY ($4::text[]))
ORDER BY transaction_id, sequence
LIMIT $5::bigint
