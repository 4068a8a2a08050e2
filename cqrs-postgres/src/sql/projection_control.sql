-- An operator's request on a stopped or running projection, announced to its owner.
-- $1 name, $2 version, $3 what: 'retry' clears the failure, 'skip' also moves the
-- checkpoint past the failing event, 'rebuild' asks the owner to reset and replay.
-- $4 the NOTIFY channel.
--
-- Returns the projection's position after the change, or no row when there was nothing
-- to do (no such projection, or not failed for 'retry' and 'skip').
WITH changed AS (
    UPDATE {schema}.projections
    SET transaction_id = CASE WHEN $3::text = 'skip' THEN failed_transaction_id
                              ELSE transaction_id END,
        sequence = CASE WHEN $3::text = 'skip' THEN failed_sequence ELSE sequence END,
        state = CASE WHEN $3::text = 'rebuild' THEN state ELSE 'running' END,
        rebuild_requested = rebuild_requested OR $3::text = 'rebuild',
        error = CASE WHEN $3::text = 'rebuild' THEN error ELSE NULL END,
        failed_transaction_id = CASE WHEN $3::text = 'rebuild' THEN failed_transaction_id
                                     ELSE NULL END,
        failed_sequence = CASE WHEN $3::text = 'rebuild' THEN failed_sequence ELSE NULL END,
        failed_at = CASE WHEN $3::text = 'rebuild' THEN failed_at ELSE NULL END,
        updated_at = now()
    WHERE name = $1::text
      AND version = $2::integer
      AND NOT inline
      AND ($3::text = 'rebuild' OR error IS NOT NULL)
    RETURNING name, version, transaction_id, sequence, active
),
notified AS (
    SELECT pg_notify($4::text, {control_notice}) FROM changed
)
SELECT c.transaction_id, c.sequence
FROM changed AS c
CROSS JOIN (SELECT count(*) AS n FROM notified) AS n
