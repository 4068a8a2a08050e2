-- The outcome of an append found by its events, after the append was sent again because
-- its connection failed with the outcome unknown, and the second attempt found the stream
-- already past its expected version or its event ids taken.
--
-- $1 stream_type, $2 stream_id, $3 the append's event ids.
--
-- Returns the outcome only if all of the events are there, in that stream; the store
-- also checks that they start right after the append's expected version.
SELECT min(stream_version) OVER () AS first_version, stream_version,
       transaction_id, sequence, count(*) OVER () AS found
FROM {schema}.events
WHERE event_id = ANY ($3::uuid[])
  AND stream_type = $1::text
  AND stream_id = $2::text
ORDER BY stream_version DESC
LIMIT 1
