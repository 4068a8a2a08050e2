-- Every projection version (or those named $1), with its lag and whether an owner holds
-- its lock now.
--
-- Lag counts the events the projection wants after its checkpoint that a reader can see
-- (same visibility rule as read_all.sql), and dates the oldest of them.
WITH {horizon},
db AS MATERIALIZED (
    SELECT oid FROM pg_database WHERE datname = current_database()
)
SELECT p.name, p.version, p.transaction_id, p.sequence, p.active, p.rebuilding,
       p.rebuild_requested, p.inline, p.owner, p.error, p.failed_transaction_id,
       p.failed_sequence, p.updated_at,
       EXISTS (
           SELECT 1 FROM pg_locks AS l, db
           WHERE l.locktype = 'advisory'
             AND l.granted
             AND l.database = db.oid
             AND l.classid::bigint = (p.lock_key >> 32) & 4294967295
             AND l.objid::bigint = p.lock_key & 4294967295
             AND l.objsubid = 1
       ) AS owned,
       EXISTS (
           SELECT 1 FROM {schema}.projections AS a
           WHERE a.name = p.name AND a.active AND a.version < p.version
       ) AS building_beside,
       lag.events AS lag_events,
       COALESCE(extract(epoch FROM now() - lag.oldest)::float8, 0) AS lag_seconds
FROM {schema}.projections AS p
LEFT JOIN LATERAL (
    SELECT count(*) AS events, min(e.recorded_at) AS oldest
    FROM {schema}.events AS e
    WHERE NOT p.inline
      AND (e.transaction_id, e.sequence) > (p.transaction_id, p.sequence)
      AND e.transaction_id < (SELECT horizon FROM horizon)
      AND (cardinality(p.stream_types) = 0 OR e.stream_type = ANY (p.stream_types))
      AND (cardinality(p.event_types) = 0 OR e.event_type = ANY (p.event_types))
) AS lag ON true
WHERE $1::text IS NULL OR p.name = $1::text
ORDER BY p.name, p.version
