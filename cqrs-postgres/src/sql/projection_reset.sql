-- Moves a checkpoint back to the start for a rebuild, in the transaction that reset the
-- view, and announces it. $1 name, $2 version, $3 the NOTIFY channel.
WITH reset AS (
    UPDATE {schema}.projections
    SET transaction_id = 0,
        sequence = 0,
        state = 'rebuilding',
        rebuilding = true,
        rebuild_requested = false,
        error = NULL,
        failed_transaction_id = NULL,
        failed_sequence = NULL,
        failed_at = NULL,
        updated_at = now()
    WHERE name = $1::text AND version = $2::integer AND rebuild_requested
    RETURNING name, version, active, transaction_id, sequence
),
notified AS (
    SELECT pg_notify($3::text, {checkpoint_notice}) FROM reset
)
SELECT r.active
FROM reset AS r
CROSS JOIN (SELECT count(*) AS n FROM notified) AS n
