-- Appends to several streams as one unit (PgEventStore::append_atomic): every stream at
-- its expected version and all events written by this statement's one transaction, or
-- nothing written.
--
-- $1 stream types, $2 stream ids, $3 expected versions: one element per append, no
-- stream twice. $4 the unit's command id (or NULL). $5 the append each event belongs to
-- (1-based, into $1..$3), $6 the event's place in its append (1-based), $7..$11 the
-- events as parallel arrays (ids, types, schema versions, payloads, metadata), in unit
-- order. $12 the NOTIFY channel when the statement itself notifies
-- (PgNotify::InTransaction), otherwise NULL.
--
-- Returns rows of one `kind`:
-- * `written`: one per append (i), its stream, first and last version and position;
-- * `stale`: one per append whose stream is not at its expected version; nothing was
--   written;
-- * `duplicate`: one per append of the unit the command id recorded; nothing written;
-- * `in_use`: the command id was recorded by a single append, whose stream it names;
--   nothing written.
-- A unit racing another append on one of its streams (or on its command id, or an event
-- id) makes the statement fail with a unique violation instead.
--
-- As in the other append statements, this is the first (and only) write of its
-- transaction: all the unit's events carry its one transaction id, contiguous in the
-- log's order. The check and the insert are append_batch_insert.sql, with the insert
-- held back unless every stream is ready.
WITH streams AS (
    SELECT s.stream_type, s.stream_id, s.expected, s.i
    FROM unnest($1::text[], $2::text[], $3::bigint[])
         WITH ORDINALITY AS s (stream_type, stream_id, expected, i)
),
unit AS (
    SELECT u.i, u.stream_type, u.stream_id, u.first_version, u.stream_version,
           u.transaction_id, u.sequence
    FROM {schema}.command_units AS u
    WHERE $4::uuid IS NOT NULL AND u.command_id = $4::uuid
),
existing AS (
    SELECT c.stream_type, c.stream_id, c.first_version, c.stream_version,
           c.transaction_id, c.sequence
    FROM {schema}.commands AS c
    WHERE $4::uuid IS NOT NULL AND c.command_id = $4::uuid
),
-- Nothing to check or write when the command id is recorded.
candidates AS (
    SELECT s.stream_type, s.stream_id, s.expected, s.i
    FROM streams AS s
    WHERE NOT EXISTS (SELECT 1 FROM existing)
),
{batch_insert},
written AS (
    SELECT r.i, r.stream_type, r.stream_id, r.expected + 1 AS first_version,
           max(a.stream_version) AS stream_version,
           max(a.transaction_id) AS transaction_id, max(a.sequence) AS sequence
    FROM appended AS a
    JOIN ready AS r ON r.stream_type = a.stream_type AND r.stream_id = a.stream_id
    GROUP BY r.i, r.stream_type, r.stream_id, r.expected
),
recorded AS (
    INSERT INTO {schema}.commands
        (command_id, stream_type, stream_id, first_version, stream_version, transaction_id,
         sequence)
    SELECT $4::uuid, stream_type, stream_id, first_version, stream_version,
           transaction_id, sequence
    FROM written
    WHERE $4::uuid IS NOT NULL AND i = 1
),
recorded_unit AS (
    INSERT INTO {schema}.command_units
        (command_id, i, stream_type, stream_id, first_version, stream_version,
         transaction_id, sequence)
    SELECT $4::uuid, i, stream_type, stream_id, first_version, stream_version,
           transaction_id, sequence
    FROM written
    WHERE $4::uuid IS NOT NULL
),
notified AS (
    SELECT pg_notify($12::text, {position_notice}) AS sent
    FROM (
        SELECT transaction_id, sequence FROM written
        ORDER BY transaction_id DESC, sequence DESC
        LIMIT 1
    ) AS last
    WHERE $12::text IS NOT NULL
){inline_statements}
SELECT 'written' AS kind, w.i, w.stream_type, w.stream_id, w.first_version,
       w.stream_version, w.transaction_id, w.sequence
FROM written AS w
CROSS JOIN (SELECT count(*) AS n FROM notified) AS n
UNION ALL
SELECT 'stale', c.i, c.stream_type, c.stream_id, NULL, NULL, NULL, NULL
FROM candidates AS c
WHERE NOT EXISTS (SELECT 1 FROM ready AS r WHERE r.i = c.i)
UNION ALL
SELECT 'duplicate', u.i, u.stream_type, u.stream_id, u.first_version, u.stream_version,
       u.transaction_id, u.sequence
FROM unit AS u
UNION ALL
SELECT 'in_use', 0, e.stream_type, e.stream_id, e.first_version, e.stream_version,
       e.transaction_id, e.sequence
FROM existing AS e
WHERE NOT EXISTS (SELECT 1 FROM unit)
