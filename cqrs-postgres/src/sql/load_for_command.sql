-- What a command needs, in one round trip and one snapshot of the database: the
-- stream's snapshot of the wanted state version (if any), then the events after it,
-- with only the columns a fold reads.
-- $1 stream_type, $2 stream_id, $3 state version.
--
-- Payloads come as text, which the fold deserialises straight into the event type; the
-- snapshot's state comes in its own column.
-- Columns are read by position (see rows::ReplayRow): keep their order and types.
--
-- A snapshot at a version the stream does not have (written by something else) comes
-- back without its state, and the events after it are all of the stream's: the store
-- ignores it, with a warning.
WITH snapshot AS (
    SELECT s.stream_version, s.state,
           EXISTS (
               SELECT 1 FROM {schema}.events AS e
               WHERE e.stream_type = $1::text
                 AND e.stream_id = $2::text
                 AND e.stream_version = s.stream_version
           ) AS reached
    FROM {schema}.snapshots AS s
    WHERE s.stream_type = $1::text AND s.stream_id = $2::text
      AND s.state_version = $3::integer
)
SELECT s.stream_version, NULL::text AS event_type, NULL::integer AS schema_version,
       NULL::text AS payload, CASE WHEN s.reached THEN s.state END AS state
FROM snapshot AS s
UNION ALL
SELECT e.stream_version, e.event_type, e.schema_version, e.payload::text, NULL::jsonb
FROM {schema}.events AS e
WHERE e.stream_type = $1::text
  AND e.stream_id = $2::text
  AND e.stream_version > COALESCE((SELECT stream_version FROM snapshot WHERE reached), 0)
