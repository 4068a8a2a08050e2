-- Appends the events of several appends, each to a stream of its own, in one statement:
-- appends that were waiting at the same time (see batch.rs). Each append is checked as
-- append.sql checks one: a command id already recorded returns its original outcome,
-- and a stream that is not at the expected version gets nothing written, while the
-- others are written.
--
-- $1 stream types, $2 stream ids, $3 expected versions, $4 command ids (or NULL): one
-- element per append, no stream and no command id twice. $5 the append each event
-- belongs to (1-based, into $1..$4), $6 the event's place in its append (1-based),
-- $7..$11 the events as parallel arrays (ids, types, schema versions, payloads,
-- metadata), in append order.
--
-- Returns one row per append written (duplicate = false) or found by its command id
-- (duplicate = true): the append's stream, its first and last version and its position,
-- and for a command id found, the stream it was recorded for (holder_type, holder_id).
-- An append with no row was refused on its expected version: its stream's newest
-- committed version is another. An append racing one still in flight for the same
-- stream or command id, or an event id already taken, makes the whole statement fail
-- with a unique violation instead (and the appends are then sent one by one, to learn
-- which).
--
-- As in the other append statements, this is the first (and only) write of its
-- transaction. Its check and insert (`ready`, `appended`) are append_batch_insert.sql.
-- The placeholders for inline SQL projections are those of append.sql; without any,
-- `{inline_columns}` is `stream_type, stream_id` (which the statement itself needs, and
-- the inline columns include), so `appended` has the same columns in the same order as in
-- the other append statements.
WITH streams AS (
    SELECT s.stream_type, s.stream_id, s.expected, s.command_id, s.i
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::uuid[])
         WITH ORDINALITY AS s (stream_type, stream_id, expected, command_id, i)
),
existing AS (
    SELECT s.i, s.stream_type, s.stream_id, c.first_version, c.stream_version,
           c.transaction_id, c.sequence, c.stream_type AS holder_type,
           c.stream_id AS holder_id
    FROM streams AS s
    JOIN {schema}.commands AS c ON c.command_id = s.command_id
),
-- The appends to check and write: those whose command id is not recorded.
candidates AS (
    SELECT s.stream_type, s.stream_id, s.expected, s.command_id, s.i
    FROM streams AS s
    WHERE NOT EXISTS (SELECT 1 FROM existing AS x WHERE x.i = s.i)
),
{batch_insert},
written AS (
    SELECT r.i, r.command_id, r.stream_type, r.stream_id, r.expected + 1 AS first_version,
           max(a.stream_version) AS stream_version,
           max(a.transaction_id) AS transaction_id, max(a.sequence) AS sequence
    FROM appended AS a
    JOIN ready AS r ON r.stream_type = a.stream_type AND r.stream_id = a.stream_id
    GROUP BY r.i, r.command_id, r.stream_type, r.stream_id, r.expected
),
recorded AS (
    INSERT INTO {schema}.commands
        (command_id, stream_type, stream_id, first_version, stream_version, transaction_id,
         sequence)
    SELECT command_id, stream_type, stream_id, first_version, stream_version,
           transaction_id, sequence
    FROM written
    WHERE command_id IS NOT NULL
){inline_statements}
SELECT stream_type, stream_id, false AS duplicate, first_version, stream_version,
       transaction_id, sequence, NULL::text AS holder_type, NULL::text AS holder_id
FROM written
UNION ALL
SELECT stream_type, stream_id, true, first_version, stream_version, transaction_id,
       sequence, holder_type, holder_id
FROM existing
