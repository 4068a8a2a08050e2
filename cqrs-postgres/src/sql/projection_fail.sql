-- Stops a projection at an event its handler keeps failing on, and tells the runners.
-- $1 name, $2 version, $3 $4 the position the worker is at (the fence), $5 $6 the
-- failing event's position, $7 the error, $8 the NOTIFY channel.
WITH failed AS (
    UPDATE {schema}.projections
    SET state = 'failed',
        error = $7::text,
        failed_transaction_id = $5::bigint,
        failed_sequence = $6::bigint,
        failed_at = now(),
        updated_at = now()
    WHERE name = $1::text
      AND version = $2::integer
      AND transaction_id = $3::bigint
      AND sequence = $4::bigint
      AND error IS NULL
    RETURNING name, version
),
notified AS (
    SELECT pg_notify($8::text, {control_notice}) FROM failed
)
SELECT f.name
FROM failed AS f
CROSS JOIN (SELECT count(*) AS n FROM notified) AS n
