-- The outcome recorded for a command id, with the stream it was recorded for. $1 command
-- id.
SELECT first_version, stream_version, transaction_id, sequence, stream_type AS holder_type,
       stream_id AS holder_id
FROM {schema}.commands
WHERE command_id = $1::uuid
