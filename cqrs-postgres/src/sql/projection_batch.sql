-- One batch for a projection worker, read in one snapshot: the projection's row (the
-- header), the head of the readable log, and up to $7 events after the worker's position.
-- $1 name, $2 version, $3 $4 the worker's position (transaction id, sequence),
-- $5 stream types and $6 event types to keep (empty: all), $7 the batch size.
--
-- The visibility rule is the one of read_all.sql: only rows of transactions below the
-- snapshot's xmin, which have all ended. The head obeys the same rule in the same
-- snapshot, so when fewer than $7 events come back, every wanted event up to the head is
-- among them and the checkpoint may move to the head.
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin
),
head AS (
    SELECT transaction_id, sequence
    FROM {schema}.events
    WHERE transaction_id < (SELECT xmin FROM horizon)
    ORDER BY transaction_id DESC, sequence DESC
    LIMIT 1
)
SELECT true AS is_header, p.transaction_id, p.sequence,
       h.transaction_id AS head_transaction_id, h.sequence AS head_sequence,
       p.active, p.rebuilding, p.rebuild_requested, p.error IS NOT NULL AS failed,
       (SELECT a.version FROM {schema}.projections AS a
        WHERE a.name = p.name AND a.active) AS active_version,
       NULL::text AS stream_type, NULL::text AS stream_id, NULL::bigint AS stream_version,
       NULL::uuid AS event_id, NULL::text AS event_type, NULL::integer AS schema_version,
       NULL::jsonb AS payload, NULL::text AS metadata, NULL::timestamptz AS recorded_at
FROM {schema}.projections AS p
LEFT JOIN head AS h ON true
WHERE p.name = $1::text AND p.version = $2::integer
UNION ALL
(
    SELECT false, e.transaction_id, e.sequence, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
           e.stream_type, e.stream_id, e.stream_version, e.event_id, e.event_type,
           e.schema_version, e.payload, e.metadata::text, e.recorded_at
    FROM {schema}.events AS e
    WHERE (e.transaction_id, e.sequence) > ($3::bigint, $4::bigint)
      AND e.transaction_id < (SELECT xmin FROM horizon)
      AND (cardinality($5::text[]) = 0 OR e.stream_type = ANY ($5::text[]))
      AND (cardinality($6::text[]) = 0 OR e.event_type = ANY ($6::text[]))
    ORDER BY e.transaction_id, e.sequence
    LIMIT $7::bigint
)
