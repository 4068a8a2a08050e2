-- Which of the given event ids is already stored (after a unique violation on them).
-- $1 event ids.
SELECT event_id
FROM {schema}.events
WHERE event_id = ANY ($1::uuid[])
LIMIT 1
