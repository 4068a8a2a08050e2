-- One batch for a projection worker, read in one snapshot: the projection's row (the
-- header), the head of the readable log, and a window of the log: the next $7 events
-- after the worker's position ($3 $4), in log order. Every event of the window comes
-- back, so the worker knows how far the window reached, but only the events the
-- projection wants ($5 stream types and $6 event types; empty: all) come with their
-- content, the payload and metadata as JSON text (the worker deserialises the payload
-- straight into the projection's event type). $1 name, $2 version.
--
-- The visibility rule is the one of read_all.sql: only rows of transactions below the
-- horizon (src/db/horizon.rs). The head obeys the same rule in the same
-- snapshot, so when the window is not full, it reached everything up to the head.
--
-- The window is a plain ordered range scan of the primary key; the filter is applied to
-- its rows, never inside the scan: there, stale statistics can make the planner pick a
-- bitmap scan of every event of a stream type and a sort, which makes each batch as slow
-- as the log is long.
WITH {horizon},
head AS (
    SELECT transaction_id, sequence
    FROM {schema}.events
    WHERE transaction_id < (SELECT horizon FROM horizon)
    ORDER BY transaction_id DESC, sequence DESC
    LIMIT 1
)
SELECT true AS is_header, p.transaction_id, p.sequence,
       h.transaction_id AS head_transaction_id, h.sequence AS head_sequence,
       p.active, p.rebuilding, p.rebuild_requested, p.error IS NOT NULL AS failed,
       (SELECT a.version FROM {schema}.projections AS a
        WHERE a.name = p.name AND a.active) AS active_version,
       false AS wanted,
       NULL::text AS stream_type, NULL::text AS stream_id, NULL::bigint AS stream_version,
       NULL::uuid AS event_id, NULL::text AS event_type, NULL::integer AS schema_version,
       NULL::text AS payload, NULL::text AS metadata, NULL::timestamptz AS recorded_at
FROM {schema}.projections AS p
LEFT JOIN head AS h ON true
WHERE p.name = $1::text AND p.version = $2::integer
UNION ALL
SELECT false, w.transaction_id, w.sequence, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       w.wanted,
       CASE WHEN w.wanted THEN w.stream_type END,
       CASE WHEN w.wanted THEN w.stream_id END,
       CASE WHEN w.wanted THEN w.stream_version END,
       CASE WHEN w.wanted THEN w.event_id END,
       CASE WHEN w.wanted THEN w.event_type END,
       CASE WHEN w.wanted THEN w.schema_version END,
       CASE WHEN w.wanted THEN w.payload::text END,
       CASE WHEN w.wanted THEN w.metadata::text END,
       CASE WHEN w.wanted THEN w.recorded_at END
FROM (
    SELECT e.transaction_id, e.sequence, e.stream_type, e.stream_id, e.stream_version,
           e.event_id, e.event_type, e.schema_version, e.payload, e.metadata,
           e.recorded_at,
           (cardinality($5::text[]) = 0 OR e.stream_type = ANY ($5::text[]))
           AND (cardinality($6::text[]) = 0 OR e.event_type = ANY ($6::text[])) AS wanted
    FROM {schema}.events AS e
    WHERE (e.transaction_id, e.sequence) > ($3::bigint, $4::bigint)
      AND e.transaction_id < (SELECT horizon FROM horizon)
    ORDER BY e.transaction_id, e.sequence
    LIMIT $7::bigint
) AS w
