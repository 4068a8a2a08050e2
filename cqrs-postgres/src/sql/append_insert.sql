-- The insert of an append's events, shared by append.sql and append_plain.sql (their
-- `appended` CTE): $1 stream_type, $2 stream_id, $3 expected version, $4..$8 the events
-- as parallel arrays, inserted only if the statement's `ready` CTE says so.
INSERT INTO {schema}.events
    (stream_type, stream_id, stream_version, event_id, event_type, schema_version,
     payload, metadata)
SELECT $1::text, $2::text, $3::bigint + e.n, e.event_id, e.event_type, e.schema_version,
       e.payload, e.metadata
FROM unnest($4::uuid[], $5::text[], $6::integer[], $7::jsonb[], $8::jsonb[])
     WITH ORDINALITY AS e (event_id, event_type, schema_version, payload, metadata, n)
WHERE (SELECT ok FROM ready)
ORDER BY e.n
RETURNING stream_version, transaction_id, sequence{inline_columns}
