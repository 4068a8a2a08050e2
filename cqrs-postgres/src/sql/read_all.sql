-- A batch of the global log in commit-safe order.
-- $1, $2 the position read so far (transaction id, sequence), $3 stream types and
-- $4 event types to keep (empty: all), $5 the batch size.
--
-- Only rows of transactions below the snapshot's xmin are returned: all of those have
-- ended, and every transaction still running or yet to start has an id at or above it,
-- so no event can later appear at a position this batch has passed.
SELECT sequence, transaction_id, stream_type, stream_id, stream_version, event_id,
       event_type, schema_version, payload, metadata::text AS metadata, recorded_at
FROM {schema}.events
WHERE (transaction_id, sequence) > ($1::bigint, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
  AND (cardinality($3::text[]) = 0 OR stream_type = ANY ($3::text[]))
  AND (cardinality($4::text[]) = 0 OR event_type = ANY ($4::text[]))
ORDER BY transaction_id, sequence
LIMIT $5::bigint
