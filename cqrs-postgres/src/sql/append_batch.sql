-- Appends the events of several appends, each to a stream of its own, in one statement:
-- appends without a command id that were waiting at the same time (see batch.rs). Each
-- append is checked against its own expected version, as in append_plain.sql, and a
-- stream that is not at it gets nothing written, while the others are written.
--
-- $1 stream types, $2 stream ids, $3 expected versions: one element per append, no
-- stream twice. $4 the append each event belongs to (1-based, into $1..$3), $5 the
-- event's place in its append (1-based), $6..$10 the events as parallel arrays (ids,
-- types, schema versions, payloads, metadata), in append order.
--
-- Returns one row per append written: its stream, last version and position, with the
-- events' recorded_at. An append with no row was refused on its expected version: its
-- stream's newest committed version is another. An append racing one still in flight
-- for the same stream, or an event id already taken, makes the whole statement fail
-- with a unique violation instead (and the appends are then sent one by one to learn
-- which).
--
-- As in the other append statements, this is the first (and only) write of its
-- transaction. The placeholders for inline SQL projections are those of append.sql;
-- without any, `{inline_columns}` is `stream_type, stream_id` (the columns the last
-- SELECT needs, which the inline columns include), so `appended` has the same columns
-- in the same order as in the other append statements.
WITH streams AS (
    SELECT s.stream_type, s.stream_id, s.expected, s.i
    FROM unnest($1::text[], $2::text[], $3::bigint[])
         WITH ORDINALITY AS s (stream_type, stream_id, expected, i)
),
-- Each stream's check is its newest version, one index lookup (LATERAL ... LIMIT 1): a
-- stream already past its expected version gets nothing written, rather than failing
-- the statement on the log's key.
ready AS (
    SELECT s.stream_type, s.stream_id, s.expected, s.i
    FROM streams AS s
    LEFT JOIN LATERAL (
        SELECT e.stream_version
        FROM {schema}.events AS e
        WHERE e.stream_type = s.stream_type
          AND e.stream_id = s.stream_id
        ORDER BY e.stream_version DESC
        LIMIT 1
    ) AS newest ON true
    WHERE coalesce(newest.stream_version, 0) = s.expected
),
appended AS (
    INSERT INTO {schema}.events
        (stream_type, stream_id, stream_version, event_id, event_type, schema_version,
         payload, metadata)
    SELECT r.stream_type, r.stream_id, r.expected + e.k, e.event_id, e.event_type,
           e.schema_version, e.payload, e.metadata
    FROM unnest($4::integer[], $5::integer[], $6::uuid[], $7::text[], $8::integer[],
                $9::jsonb[], $10::jsonb[])
         WITH ORDINALITY AS e (i, k, event_id, event_type, schema_version, payload,
                               metadata, n)
    JOIN ready AS r ON r.i = e.i
    ORDER BY e.n
    RETURNING stream_version, transaction_id, sequence{inline_columns}
){inline_statements}
SELECT stream_type, stream_id, max(stream_version) AS stream_version,
       max(transaction_id) AS transaction_id, max(sequence) AS sequence,
       now() AS recorded_at
FROM appended
GROUP BY stream_type, stream_id
