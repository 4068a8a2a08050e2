-- The common case of append_batch.sql: a batch in which no append carries a command id.
-- It does what append_batch.sql does with $4 all NULL, without the steps for command
-- ids, which the server would otherwise set up on every run (about a seventh of its time
-- for a batch of eight one-event appends).
--
-- Parameters and result as in append_batch.sql ($4 is not read); every row has
-- duplicate = false. The check and insert (`ready`, `appended`) are
-- append_batch_insert.sql; `ready` is read once, by the insert, so the server need not
-- keep it.
WITH candidates AS (
    SELECT s.stream_type, s.stream_id, s.expected, s.i
    FROM unnest($1::text[], $2::text[], $3::bigint[])
         WITH ORDINALITY AS s (stream_type, stream_id, expected, i)
),
{batch_insert}{inline_statements}
SELECT stream_type, stream_id, false AS duplicate,
       min(stream_version) AS first_version, max(stream_version) AS stream_version,
       max(transaction_id) AS transaction_id, max(sequence) AS sequence
FROM appended
GROUP BY stream_type, stream_id
