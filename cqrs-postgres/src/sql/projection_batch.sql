-- One batch for a projection worker, read in one snapshot: the projection's row (the
-- header), the head of the readable log, and a window of the log after the worker's
-- position: the next $7 events, in log order, cut at $8 $9. Of the window, only the
-- events the projection wants come back; the header says how much of the log the window
-- covered, so the checkpoint can move past the others.
-- $1 name, $2 version, $3 $4 the worker's position (transaction id, sequence),
-- $5 stream types and $6 event types to keep (empty: all), $7 the window's size,
-- $8 $9 the last position the window may reach.
--
-- The visibility rule is the one of read_all.sql: only rows of transactions below the
-- snapshot's xmin, which have all ended. The head obeys the same rule in the same
-- snapshot, so when the window is not full, it covered everything up to the head.
--
-- The window is a plain ordered range scan of the primary key, filtered only afterwards:
-- with the filter inside, stale statistics can make the planner pick a bitmap scan of
-- every event of a stream type and a sort, which makes each batch as slow as the log is
-- long.
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
),
head AS (
    SELECT transaction_id, sequence
    FROM {schema}.events
    WHERE transaction_id < (SELECT xmin FROM horizon)
    ORDER BY transaction_id DESC, sequence DESC
    LIMIT 1
),
log_window AS MATERIALIZED (
    SELECT e.transaction_id, e.sequence, e.stream_type, e.stream_id, e.stream_version,
           e.event_id, e.event_type, e.schema_version, e.payload, e.metadata,
           e.recorded_at
    FROM {schema}.events AS e
    WHERE (e.transaction_id, e.sequence) > ($3::bigint, $4::bigint)
      AND e.transaction_id < (SELECT xmin FROM horizon)
    ORDER BY e.transaction_id, e.sequence
    LIMIT $7::bigint
),
-- The bound applies after the scan, so that it never sways the scan's plan.
bounded AS (
    SELECT * FROM log_window
    WHERE (transaction_id, sequence) <= ($8::bigint, $9::bigint)
),
covered AS (
    SELECT transaction_id, sequence, count(*) OVER () AS scanned
    FROM bounded
    ORDER BY transaction_id DESC, sequence DESC
    LIMIT 1
)
SELECT true AS is_header, p.transaction_id, p.sequence,
       h.transaction_id AS head_transaction_id, h.sequence AS head_sequence,
       c.transaction_id AS covered_transaction_id, c.sequence AS covered_sequence,
       COALESCE(c.scanned, 0) AS scanned,
       p.active, p.rebuilding, p.rebuild_requested, p.error IS NOT NULL AS failed,
       (SELECT a.version FROM {schema}.projections AS a
        WHERE a.name = p.name AND a.active) AS active_version,
       NULL::text AS stream_type, NULL::text AS stream_id, NULL::bigint AS stream_version,
       NULL::uuid AS event_id, NULL::text AS event_type, NULL::integer AS schema_version,
       NULL::jsonb AS payload, NULL::text AS metadata, NULL::timestamptz AS recorded_at
FROM {schema}.projections AS p
LEFT JOIN head AS h ON true
LEFT JOIN covered AS c ON true
WHERE p.name = $1::text AND p.version = $2::integer
UNION ALL
SELECT false, w.transaction_id, w.sequence, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, w.stream_type, w.stream_id, w.stream_version, w.event_id,
       w.event_type, w.schema_version, w.payload, w.metadata::text, w.recorded_at
FROM bounded AS w
WHERE (cardinality($5::text[]) = 0 OR w.stream_type = ANY ($5::text[]))
  AND (cardinality($6::text[]) = 0 OR w.event_type = ANY ($6::text[]))
