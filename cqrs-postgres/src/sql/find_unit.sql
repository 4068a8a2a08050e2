-- Where the events of an atomic unit are, if it was written: one row per stream, with
-- its first and last version and the position of its last event. $1 the unit's event
-- ids. (A unit is written whole or not at all, so any of its events tells.)
SELECT stream_type, stream_id, min(stream_version) AS first_version,
       max(stream_version) AS stream_version, max(transaction_id) AS transaction_id,
       max(sequence) AS sequence
FROM {schema}.events
WHERE event_id = ANY ($1::uuid[])
GROUP BY stream_type, stream_id
