-- The check and the insert of a batch of appends, shared by append_batch.sql and
-- append_batch_plain.sql: their `ready` and `appended` CTEs. Each statement first names
-- the appends to check `candidates` (stream_type, stream_id, expected, i, and whatever
-- else it needs later from `ready`).
--
-- Each stream's check is its newest version, one index lookup (LATERAL ... LIMIT 1): a
-- stream already past its expected version gets nothing written, rather than failing
-- the statement on the log's key. (Written as `expected = 0 OR EXISTS (...)`, the
-- planner may hash the whole log instead.) $5..$11 are the events, each inserted if
-- `ready` holds its append (and, in an atomic unit, only if it holds every append).
ready AS (
    SELECT c.*
    FROM candidates AS c
    LEFT JOIN LATERAL (
        SELECT e.stream_version
        FROM {schema}.events AS e
        WHERE e.stream_type = c.stream_type
          AND e.stream_id = c.stream_id
        ORDER BY e.stream_version DESC
        LIMIT 1
    ) AS newest ON true
    WHERE coalesce(newest.stream_version, 0) = c.expected
),
appended AS (
    INSERT INTO {schema}.events
        (stream_type, stream_id, stream_version, event_id, event_type, schema_version,
         payload, metadata)
    SELECT r.stream_type, r.stream_id, r.expected + e.k, e.event_id, e.event_type,
           e.schema_version, e.payload, e.metadata
    FROM unnest($5::integer[], $6::integer[], $7::uuid[], $8::text[], $9::integer[],
                $10::jsonb[], $11::jsonb[])
         WITH ORDINALITY AS e (i, k, event_id, event_type, schema_version, payload,
                               metadata, n)
    JOIN ready AS r ON r.i = e.i
    WHERE {unit_ready}
    ORDER BY e.n
    RETURNING stream_version, transaction_id, sequence{inline_columns}
)
