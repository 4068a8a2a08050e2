-- The insert of a batch of appends, shared by append_batch.sql and
-- append_batch_plain.sql (their `appended` CTE): $5..$11 the events, each inserted if the
-- statement's `ready` CTE holds its append.
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
ORDER BY e.n
RETURNING stream_version, transaction_id, sequence{inline_columns}
