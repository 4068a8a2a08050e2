-- What a command needs, in one round trip and one snapshot of the database: the
-- stream's snapshot of the wanted state version (if any), then the events after it.
-- $1 stream_type, $2 stream_id, $3 state version.
WITH snapshot AS (
    SELECT stream_version, state
    FROM {schema}.snapshots
    WHERE stream_type = $1::text AND stream_id = $2::text AND state_version = $3::integer
)
SELECT true AS is_snapshot, s.stream_version, s.state AS payload,
       NULL::bigint AS sequence, NULL::bigint AS transaction_id, NULL::uuid AS event_id,
       NULL::text AS event_type, NULL::integer AS schema_version, NULL::text AS metadata,
       NULL::timestamptz AS recorded_at
FROM snapshot AS s
UNION ALL
SELECT false, e.stream_version, e.payload,
       e.sequence, e.transaction_id, e.event_id,
       e.event_type, e.schema_version, e.metadata::text AS metadata,
       e.recorded_at
FROM {schema}.events AS e
WHERE e.stream_type = $1::text
  AND e.stream_id = $2::text
  AND e.stream_version > COALESCE((SELECT stream_version FROM snapshot), 0)
