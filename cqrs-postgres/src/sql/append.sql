-- Appends events to one stream in one statement.
--
-- $1 stream_type, $2 stream_id, $3 expected version, $4..$8 the events as parallel
-- arrays (ids, types, schema versions, payloads, metadata), $9 command id (or NULL),
-- $10 the NOTIFY channel when the statement itself notifies (PgNotify::InTransaction),
-- otherwise NULL.
--
-- Returns one row: the outcome (duplicate = false) with the events' recorded_at, or the
-- original outcome of the command id (duplicate = true), with the stream it was recorded
-- for (holder_type, holder_id: the store refuses the append when that is another stream). Returns no row when the stream
-- is not at the expected version. A concurrent append at the same version (or with the
-- same command id) makes the statement fail with a unique violation instead.
--
-- This is the first (and only) write of its transaction, so the transaction id the
-- events carry is assigned after the stream's previous events were seen committed.
--
-- The insert of the events (`appended`) is append_insert.sql, spliced in. The two
-- placeholders for inline SQL projections (see inline.rs) are left empty unless the
-- store has some: then `appended` returns every column of the rows it wrote, and each
-- projection's statement follows `notified` as a CTE of its own that reads them.
WITH existing AS (
    SELECT first_version, stream_version, transaction_id, sequence,
           stream_type AS holder_type, stream_id AS holder_id
    FROM {schema}.commands
    WHERE $9::uuid IS NOT NULL AND command_id = $9::uuid
),
ready AS (
    SELECT NOT EXISTS (SELECT 1 FROM existing)
       AND ($3::bigint = 0 OR EXISTS (
               SELECT 1 FROM {schema}.events
               WHERE stream_type = $1::text
                 AND stream_id = $2::text
                 AND stream_version = $3::bigint
           )) AS ok
),
appended AS (
{insert}
),
last AS (
    SELECT stream_version, transaction_id, sequence
    FROM appended
    ORDER BY stream_version DESC
    LIMIT 1
),
recorded AS (
    INSERT INTO {schema}.commands
        (command_id, stream_type, stream_id, first_version, stream_version, transaction_id,
         sequence)
    SELECT $9::uuid, $1::text, $2::text, $3::bigint + 1, stream_version, transaction_id, sequence
    FROM last
    WHERE $9::uuid IS NOT NULL
    RETURNING command_id
),
notified AS (
    SELECT pg_notify($10::text, {position_notice}) AS sent
    FROM last
    WHERE $10::text IS NOT NULL
){inline_statements}
SELECT false AS duplicate, $3::bigint + 1 AS first_version, l.stream_version,
       l.transaction_id, l.sequence, now() AS recorded_at, NULL::text AS holder_type,
       NULL::text AS holder_id
FROM last AS l
CROSS JOIN (SELECT count(*) AS n FROM notified) AS n
CROSS JOIN (SELECT count(*) AS n FROM recorded) AS r
UNION ALL
SELECT true, first_version, stream_version, transaction_id, sequence, NULL, holder_type,
       holder_id
FROM existing
