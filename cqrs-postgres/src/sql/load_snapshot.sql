-- The stored snapshot of a stream, whatever its state version. $1 stream_type, $2 stream_id.
SELECT stream_version, state_version, state
FROM {schema}.snapshots
WHERE stream_type = $1::text AND stream_id = $2::text
