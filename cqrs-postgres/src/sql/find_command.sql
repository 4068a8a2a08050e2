-- The outcome recorded for a command id. $1 command id.
SELECT first_version, stream_version, transaction_id, sequence
FROM {schema}.commands
WHERE command_id = $1::uuid
