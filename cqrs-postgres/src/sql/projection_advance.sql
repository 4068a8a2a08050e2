-- Moves a checkpoint, inside the transaction that changed the view, and announces it.
-- $1 name, $2 version, $3 $4 the position the batch started from (the fence: no row is
-- updated when someone else moved the checkpoint meanwhile), $5 $6 the new position,
-- $7 state, $8 rebuilding, $9 the NOTIFY channel.
--
-- Returns one row (whether this version is the served one) or none when fenced off.
WITH moved AS (
    UPDATE {schema}.projections
    SET transaction_id = $5::bigint,
        sequence = $6::bigint,
        state = $7::text,
        rebuilding = $8::boolean,
        updated_at = now()
    WHERE name = $1::text
      AND version = $2::integer
      AND transaction_id = $3::bigint
      AND sequence = $4::bigint
      AND error IS NULL
      AND NOT rebuild_requested
    RETURNING name, version, active, transaction_id, sequence
),
notified AS (
    SELECT pg_notify($9::text, {checkpoint_notice}) FROM moved
)
SELECT m.active
FROM moved AS m
CROSS JOIN (SELECT count(*) AS n FROM notified) AS n
