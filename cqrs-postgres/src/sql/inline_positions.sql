-- Inside an append's transaction, for its inline projections: where the events it just
-- wrote sit in the global log. $1 stream_type, $2 stream_id, $3 $4 the first and last
-- version written.
SELECT stream_version, sequence, transaction_id, recorded_at
FROM {schema}.events
WHERE stream_type = $1::text
  AND stream_id = $2::text
  AND stream_version BETWEEN $3::bigint AND $4::bigint
ORDER BY stream_version
