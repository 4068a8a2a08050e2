-- The events of one stream after a version, in version order.
-- $1 stream_type, $2 stream_id, $3 after this version.
SELECT sequence, transaction_id, stream_version, event_id, event_type, schema_version,
       payload, metadata::text AS metadata, recorded_at
FROM {schema}.events
WHERE stream_type = $1::text AND stream_id = $2::text AND stream_version > $3::bigint
ORDER BY stream_version
